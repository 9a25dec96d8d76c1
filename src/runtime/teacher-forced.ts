// Teacher forcing inside a runner (DESIGN.md, step 8): the prompt and a claimed output go
// into the model as one prefill, and at chosen output positions we read the model's
// next-token distribution one token earlier (node-llama-cpp `controlledEvaluate`). One
// prefill of n tokens is far cheaper than generating them one by one.
//
// A receipt hashes the output TEXT, and text does not name its tokens: the tokenizer's own
// split of a text is often not the split the model generated (with the built-in models it
// never is: their word tokens cannot be reached by SentencePiece merges, so their text
// tokenizes back into bytes). So a claimed text is scored under a few canonical splits, all
// functions of the text alone, and counts as honest if any of them is plausible; nobody can
// pick a split to frame a worker, and a liar gains nothing, since each split is just a way
// of reading the same text.

import type { LlamaContextSequence, LlamaModel, Token } from 'node-llama-cpp'

export interface ScoredPosition {
  /** index into the claimed output tokens */
  position: number
  /** the claimed token there */
  claimed: number
  /** the model's probability of it (0 when it was not among the returned candidates) */
  claimedProb: number
  /** the model's most likely tokens there, best first */
  topK: Array<{ token: number; prob: number }>
}

export interface TeacherForcedInput {
  promptTokens: readonly number[]
  claimedTokens: readonly number[]
  /** indices into claimedTokens */
  positions: readonly number[]
  topK: number
}

/** Scores `claimedTokens` after `promptTokens` on a sequence it clears first (it owns it meanwhile). */
export async function scoreOnSequence(
  sequence: LlamaContextSequence,
  { promptTokens, claimedTokens, positions, topK }: TeacherForcedInput,
): Promise<ScoredPosition[]> {
  if (promptTokens.length === 0) throw new Error('a teacher-forced check needs at least one prompt token')
  const wanted = new Set(positions.filter((p) => p >= 0 && p < claimedTokens.length))
  const tokens = [...promptTokens, ...claimedTokens]
  // Output i is the distribution of token i + 1, so claimed position p is read at input index
  // promptTokens.length + p − 1.
  const input = tokens.map((token, i) => {
    const p = i - promptTokens.length + 1
    return wanted.has(p) ? ([token, { generateNext: { probabilities: true } }] as [number, object]) : token
  })
  // controlledEvaluate appends to what the sequence holds: a reused sequence must start empty.
  await sequence.clearHistory()
  const outputs = await sequence.controlledEvaluate(
    input as Parameters<typeof sequence.controlledEvaluate>[0],
  )
  const evidence: ScoredPosition[] = []
  for (const p of [...wanted].sort((a, b) => a - b)) {
    const probabilities = outputs[promptTokens.length + p - 1]?.next.probabilities
    if (probabilities === undefined) continue
    const claimed = claimedTokens[p]!
    const top: Array<{ token: number; prob: number }> = []
    for (const [token, prob] of probabilities) {
      if (top.length >= topK) break
      top.push({ token: Number(token), prob })
    }
    evidence.push({ position: p, claimed, claimedProb: probabilities.get(claimed as Token) ?? 0, topK: top })
  }
  return evidence
}

interface PieceTable {
  byPiece: Map<string, number>
  longest: number
}
const pieceTables = new WeakMap<LlamaModel, PieceTable>()

/** Each token's text as it reads mid-stream (so with its leading space), for longest-match splits. */
function pieceTable(model: LlamaModel): PieceTable {
  const known = pieceTables.get(model)
  if (known !== undefined) return known
  const size = model.fileInfo.metadata.tokenizer?.ggml?.tokens?.length ?? 0
  // Detokenized after some other token, a SentencePiece "▁word" keeps its space.
  const context = model.tokenize('a', false).slice(-1)
  const byPiece = new Map<string, number>()
  let longest = 0
  for (let id = 0; id < size; id++) {
    const piece = model.detokenize([id as Token], false, context)
    // Control tokens read as nothing; a lone byte of a multi-byte character reads as U+FFFD.
    if (piece === '' || piece.includes('\uFFFD') || byPiece.has(piece)) continue
    byPiece.set(piece, id)
    longest = Math.max(longest, piece.length)
  }
  const table = { byPiece, longest }
  pieceTables.set(model, table)
  return table
}

/** Greedy longest-match split of `text` over the vocabulary; the tokenizer for what no piece covers. */
function longestMatch(model: LlamaModel, text: string): number[] {
  const { byPiece, longest } = pieceTable(model)
  const out: number[] = []
  let i = 0
  while (i < text.length) {
    let matched = false
    for (let len = Math.min(longest, text.length - i); len > 0; len--) {
      const id = byPiece.get(text.slice(i, i + len))
      if (id !== undefined) {
        out.push(id)
        i += len
        matched = true
        break
      }
    }
    if (!matched) {
      const cp = text.codePointAt(i)!
      const ch = String.fromCodePoint(cp)
      out.push(...model.tokenize(ch, false, 'trimLeadingSpace'))
      i += ch.length
    }
  }
  return out
}

/**
 * The canonical splits of a claimed output, distinct, most likely first: the tokenizer's, the
 * longest-match one, and (for a text that starts without a space, as a chat answer's first
 * chunk is detokenized) the longest-match one of the text with its dropped leading space.
 */
export function outputTokenizations(model: LlamaModel, text: string): number[][] {
  if (text === '') return [[]]
  const candidates = [longestMatch(model, text)]
  if (!/^\s/.test(text)) candidates.push(longestMatch(model, ` ${text}`))
  candidates.push([...model.tokenize(text, false, 'trimLeadingSpace')])
  const seen = new Set<string>()
  return candidates.filter((c) => {
    const key = c.join(',')
    if (seen.has(key)) return false
    seen.add(key)
    return true
  })
}
