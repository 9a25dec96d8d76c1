// The built-in models, generated deterministically by the project's own GGUF writer so
// every demo and test runs offline.
//
// substrate-tiny is a real llama-architecture network whose weights are constructed, not
// random: attention and feed-forward outputs are zero, so each block passes the residual
// through unchanged, token embeddings are one-hot, and the output matrix maps each token to
// its successor. The result is a bigram machine that llama.cpp runs like any other model:
// after any prompt it answers with one fixed sentence and then emits end-of-sequence; after a
// raw prompt ending in "~" it says "tick tock" forever (for tests that need a long stream).
//
// substrate-bench has ~25M random parameters (F16) for speed measurements; it never emits a
// control token, so generation runs until the token limit.

import { type GgufTensorSpec, type GgufValue, writeGguf } from './gguf-writer.ts'

export const BUILTIN_MODEL_NAMES = ['substrate-tiny', 'substrate-bench'] as const
export type BuiltinModelName = (typeof BUILTIN_MODEL_NAMES)[number]

export const TINY_ANSWER =
  'Hello from the Substrate, a commons where shared compute earns credits and everyone keeps their floor.'

const CHATML_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, byte: 6 } as const
const CONTROL_TOKENS = ['<unk>', '<s>', '</s>', '<|im_start|>', '<|im_end|>'] as const
const EOS_ID = 2
const FIRST_BYTE_ID = CONTROL_TOKENS.length
const SPACE_ID = FIRST_BYTE_ID + 256

interface Vocab {
  tokens: string[]
  types: number[]
  scores: number[]
}

function baseVocab(words: readonly string[]): Vocab {
  const tokens: string[] = [...CONTROL_TOKENS]
  const types: number[] = [TOKEN_TYPE.unknown, ...CONTROL_TOKENS.slice(1).map(() => TOKEN_TYPE.control)]
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)
    types.push(TOKEN_TYPE.byte)
  }
  tokens.push('\u2581')
  types.push(TOKEN_TYPE.normal)
  for (const w of words) {
    tokens.push(w)
    types.push(TOKEN_TYPE.normal)
  }
  return { tokens, types, scores: tokens.map(() => 0) }
}

/** A small, fast, deterministic PRNG (mulberry32). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

interface LlamaShape {
  name: string
  vocab: Vocab
  embd: number
  layers: number
  heads: number
  ff: number
  context: number
  weightType: 'F32' | 'F16'
}

function llamaMetadata(s: LlamaShape): Array<[string, GgufValue]> {
  return [
    ['general.architecture', { type: 'string', value: 'llama' }],
    ['general.name', { type: 'string', value: s.name }],
    ['general.alignment', { type: 'u32', value: 32 }],
    ['general.file_type', { type: 'u32', value: s.weightType === 'F16' ? 1 : 0 }],
    ['llama.context_length', { type: 'u32', value: s.context }],
    ['llama.embedding_length', { type: 'u32', value: s.embd }],
    ['llama.block_count', { type: 'u32', value: s.layers }],
    ['llama.feed_forward_length', { type: 'u32', value: s.ff }],
    ['llama.attention.head_count', { type: 'u32', value: s.heads }],
    ['llama.attention.head_count_kv', { type: 'u32', value: s.heads }],
    ['llama.rope.dimension_count', { type: 'u32', value: s.embd / s.heads }],
    ['llama.attention.layer_norm_rms_epsilon', { type: 'f32', value: 1e-5 }],
    ['tokenizer.ggml.model', { type: 'string', value: 'llama' }],
    ['tokenizer.ggml.tokens', { type: 'string[]', value: s.vocab.tokens }],
    ['tokenizer.ggml.scores', { type: 'f32[]', value: s.vocab.scores }],
    ['tokenizer.ggml.token_type', { type: 'i32[]', value: s.vocab.types }],
    ['tokenizer.ggml.unknown_token_id', { type: 'u32', value: 0 }],
    ['tokenizer.ggml.bos_token_id', { type: 'u32', value: 1 }],
    ['tokenizer.ggml.eos_token_id', { type: 'u32', value: EOS_ID }],
    ['tokenizer.ggml.add_bos_token', { type: 'bool', value: true }],
    ['tokenizer.ggml.add_eos_token', { type: 'bool', value: false }],
    ['tokenizer.chat_template', { type: 'string', value: CHATML_TEMPLATE }],
  ]
}

type Filler = (
  name: string,
  shape: readonly [number, number] | readonly [number],
) => (out: Float32Array) => void

function llamaTensors(s: LlamaShape, fill: Filler): GgufTensorSpec[] {
  const V = s.vocab.tokens.length
  const d = s.embd
  const ones = (out: Float32Array) => out.fill(1)
  const t = (name: string, shape: readonly [number, number], type: 'F32' | 'F16' = s.weightType) => ({
    name,
    shape,
    type,
    fill: fill(name, shape),
  })
  const tensors: GgufTensorSpec[] = [
    t('token_embd.weight', [d, V]),
    { name: 'output_norm.weight', shape: [d], type: 'F32', fill: ones },
  ]
  tensors.push(t('output.weight', [d, V]))
  for (let i = 0; i < s.layers; i++) {
    const p = `blk.${i}.`
    tensors.push(
      { name: `${p}attn_norm.weight`, shape: [d], type: 'F32', fill: ones },
      t(`${p}attn_q.weight`, [d, d]),
      t(`${p}attn_k.weight`, [d, d]),
      t(`${p}attn_v.weight`, [d, d]),
      t(`${p}attn_output.weight`, [d, d]),
      { name: `${p}ffn_norm.weight`, shape: [d], type: 'F32', fill: ones },
      t(`${p}ffn_gate.weight`, [d, s.ff]),
      t(`${p}ffn_up.weight`, [d, s.ff]),
      t(`${p}ffn_down.weight`, [s.ff, d]),
    )
  }
  return tensors
}

export interface TinyModelOptions {
  /** the trained context the file claims (llama.context_length); 4096 by default */
  contextLength?: number
  /**
   * Adds the pieces llama.cpp's SPM tokenizer merges "▁tick"/"▁tock" from (▁t, ▁ti, ▁tic,
   * ▁to, ▁toc), so generated "tick tock" text tokenizes back into the same tokens: what a
   * prompt that continues a stream (mesh failover) needs. Without them it falls back to
   * bytes and the bigram machine starts its sentence instead.
   */
  readableLoop?: boolean
}

/**
 * substrate-tiny: the bigram machine described at the top of this file. Tests write variants
 * that claim another context length (to exercise memory checks); the default file, and so the
 * built-in model's digest, stays the same.
 */
export async function writeTinyModel(path: string, opts: TinyModelOptions = {}): Promise<void> {
  const answerWords = TINY_ANSWER.split(' ').map((w) => `\u2581${w}`)
  const loopWords = ['\u2581tick', '\u2581tock']
  const mergePieces =
    opts.readableLoop === true ? ['t', 'ti', 'tic', 'to', 'toc'].map((p) => `\u2581${p}`) : []
  const vocab = baseVocab([...answerWords, ...loopWords, ...mergePieces])
  const idOf = (token: string) => vocab.tokens.indexOf(token)
  const V = vocab.tokens.length
  const d = 64
  // Dimension 0 is "any other token"; dimension k+1 is chain token k.
  const chain = [...answerWords, ...loopWords, '<0x7E>'].map(idOf)
  const dimOf = (id: number) => chain.indexOf(id) + 1
  const next = new Map<number, number>() // embedding dimension → successor token id
  next.set(0, idOf(answerWords[0]!))
  answerWords.forEach((w, i) => {
    next.set(dimOf(idOf(w)), i + 1 < answerWords.length ? idOf(answerWords[i + 1]!) : EOS_ID)
  })
  next.set(dimOf(idOf('<0x7E>')), idOf(loopWords[0]!))
  next.set(dimOf(idOf(loopWords[0]!)), idOf(loopWords[1]!))
  next.set(dimOf(idOf(loopWords[1]!)), idOf(loopWords[0]!))

  const random = seededRandom(0x5ab57a7e)
  const fill: Filler = (name) => (out) => {
    if (name === 'token_embd.weight') {
      for (let id = 0; id < V; id++) out[id * d + dimOf(id)] = 1
    } else if (name === 'output.weight') {
      // rmsnorm turns a one-hot row into sqrt(d) = 8 at that dimension: logit 8 × 4 = 32.
      for (const [dim, succ] of next) out[succ * d + dim] = 4
    } else if (name.endsWith('attn_output.weight') || name.endsWith('ffn_down.weight')) {
      out.fill(0)
    } else {
      for (let i = 0; i < out.length; i++) out[i] = (random() - 0.5) * 0.2
    }
  }
  const shape: LlamaShape = {
    name: 'substrate-tiny',
    vocab,
    embd: d,
    layers: 2,
    heads: 4,
    ff: 128,
    context: opts.contextLength ?? 4096,
    weightType: 'F32',
  }
  await writeGguf(path, llamaMetadata(shape), llamaTensors(shape, fill))
}

function syllableWords(count: number, random: () => number): string[] {
  const consonants = 'bcdfghklmnprstvz'
  const vowels = 'aeiou'
  const words = new Set<string>()
  while (words.size < count) {
    let w = ''
    const syllables = 1 + Math.floor(random() * 3)
    for (let i = 0; i < syllables; i++) {
      w +=
        consonants[Math.floor(random() * consonants.length)]! + vowels[Math.floor(random() * vowels.length)]!
    }
    words.add(`\u2581${w}`)
  }
  return [...words]
}

/** substrate-bench: ~25M random parameters, F16, for throughput measurements. */
export async function writeBenchModel(path: string): Promise<void> {
  const random = seededRandom(0xbe7c4)
  const vocab = baseVocab(syllableWords(1024 - SPACE_ID - 1, random))
  const firstNormal = SPACE_ID
  const d = 512
  const fill: Filler = (name, shape) => (out) => {
    const scale = 1 / Math.sqrt(shape[0])
    for (let i = 0; i < out.length; i++) out[i] = (random() * 2 - 1) * scale * 1.7
    if (name === 'output.weight') out.fill(0, 0, firstNormal * d) // never emit control or byte tokens
  }
  const shape: LlamaShape = {
    name: 'substrate-bench',
    vocab,
    embd: d,
    layers: 8,
    heads: 8,
    ff: 1408,
    context: 4096,
    weightType: 'F16',
  }
  await writeGguf(path, llamaMetadata(shape), llamaTensors(shape, fill))
}

export async function writeBuiltinModel(name: BuiltinModelName, path: string): Promise<void> {
  if (name === 'substrate-tiny') await writeTinyModel(path)
  else await writeBenchModel(path)
}
