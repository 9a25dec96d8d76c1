// The runner: a child process that loads one model with node-llama-cpp and serves
// generation requests over JSON lines on stdio. It holds no state the daemon cares about;
// if it dies, the daemon answers in-flight requests with an error and spawns a new one.
//
// Concurrency: one context with `parallel` sequences. Each request takes a free sequence;
// node-llama-cpp batches the evaluations of concurrently generating sequences into one
// decode call, which is where the multi-stream throughput comes from.
//
// With the llama-server engine (engine.ts) the runner loads only the vocabulary here,
// tokenizes and renders chat templates itself, and streams from llama.cpp's server (its own
// child, in the same sandbox) with one slot per sequence. Teacher-forced scoring loads the
// full model into node-llama-cpp on first use: it needs logits at claimed tokens, which the
// server does not offer.

import { statSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { createInterface } from 'node:readline'
import type {
  ChatHistoryItem,
  ChatWrapper,
  Llama,
  LlamaContext,
  LlamaContextSequence,
  LlamaModel,
  Token,
} from 'node-llama-cpp'
import { pickCheckPositions } from '../ledger/spot-check-sampling.ts'
import { type LlamaServer, startLlamaServer } from './llama-server-backend.ts'
import {
  type ChatMessage,
  DEFAULT_TOKEN_WINDOW_MS,
  type DoneReason,
  type FromRunner,
  type GenerateMessage,
  type SamplingOptions,
  type ScoreMessage,
  toRunnerSchema,
} from './protocol.ts'
import { outputTokenizations, scoreOnSequence } from './teacher-forced.ts'
import { chooseThreads } from './threads.ts'
import { createTokenBatcher } from './token-batcher.ts'

const send = (msg: FromRunner) => process.stdout.write(`${JSON.stringify(msg)}\n`)

/**
 * A request's tokens on their way to the daemon: the tokens of one event-loop turn (llama-server
 * often hands over several in one read) and those within the window share one message. Each
 * message costs a pipe write here, a parse in the daemon and an HTTP chunk to the client — CPU
 * taken from the model's own threads on a small machine (measured: 257 → ~100 messages for 256
 * tokens at ~250 tokens/s with no window).
 */
function tokenRelay(id: string) {
  const batcher = createTokenBatcher(async (text, tokens) => void send({ type: 'token', id, text, tokens }), {
    maxFrameChars: 256 * 1024,
    maxPendingChars: 1024 * 1024,
    windowMs: tokenWindowMs,
  })
  // Tokens and text do not come in step (a token may end mid-character, or be trimmed away):
  // each piece of text carries the tokens counted since the last one.
  let uncounted = 0
  return {
    counted(tokens: number) {
      uncounted += tokens
    },
    text(text: string) {
      if (text === '') return
      void batcher.push(text, uncounted)
      uncounted = 0
    },
    flush: () => batcher.flush(),
  }
}

let lib: typeof import('node-llama-cpp') | undefined
let llama: Llama | undefined
let model: LlamaModel | undefined
// Resolving the chat wrapper renders the model's Jinja template many times (~200 ms):
// done once per load, not once per request.
let chatWrapper: ChatWrapper | undefined
let context: LlamaContext | undefined
const freeSequences: LlamaContextSequence[] = []
const waitingForSequence: Array<(seq: LlamaContextSequence) => void> = []
const active = new Map<string, AbortController>()
let sequenceContextSize = 0
let server: LlamaServer | undefined
/** the full model for scoring, when `model` holds only the vocabulary (llama-server engine) */
let scoringModel: Promise<void> | undefined
let loaded: { modelPath: string; threads: number } | undefined
/** longest a token waits to share a `token` message with the next ones (see tokenRelay) */
let tokenWindowMs = DEFAULT_TOKEN_WINDOW_MS

interface LoadRequest {
  modelPath: string
  contextSize: number
  parallel: number
  threads: number
  llamaServer?: string | undefined
  tokenWindowMs?: number | undefined
}

async function load({ modelPath, contextSize, parallel, threads, llamaServer, ...rest }: LoadRequest) {
  const started = performance.now()
  tokenWindowMs = rest.tokenWindowMs ?? DEFAULT_TOKEN_WINDOW_MS
  lib = await import('node-llama-cpp')
  llama = await lib.getLlama({ gpu: false, logLevel: lib.LlamaLogLevel.error, maxThreads: 0 })
  model = await llama.loadModel({ modelPath, vocabOnly: llamaServer !== undefined })
  chatWrapper = lib.resolveChatWrapper(model)
  if (llamaServer !== undefined) {
    const chosen = threads > 0 ? threads : Math.max(1, availableParallelism())
    const perSequence = Math.min(contextSize, model.trainContextSize || contextSize)
    const vocab = model
    server = await startLlamaServer({
      binary: llamaServer,
      modelPath,
      contextSize: perSequence,
      parallel,
      threads: chosen,
      isEndToken: (t) => vocab.isEogToken(t as Token),
    })
    // the server is the model: without it this runner serves nothing, so it ends too (the
    // daemon answers in-flight requests and starts a fresh runner on the next one)
    void server.exited.then((why) => {
      process.stderr.write(`${why}\n`)
      process.exit(4)
    })
    sequenceContextSize = server.contextSize
    loaded = { modelPath, threads: chosen }
    send({
      type: 'ready',
      loadMs: performance.now() - started,
      contextSize: sequenceContextSize,
      trainContextSize: model.trainContextSize,
      buildType: 'llama-server',
      threads: chosen,
      measuredTokensPerSecond: {},
    })
    return
  }
  const choice = await chooseThreads(model, threads, statSync(modelPath).size)
  const size = Math.min(contextSize, model.trainContextSize) * parallel
  context = await model.createContext({ contextSize: size, sequences: parallel, threads: choice.threads })
  for (let i = 0; i < parallel; i++) freeSequences.push(context.getSequence())
  sequenceContextSize = context.contextSize / parallel
  loaded = { modelPath, threads: choice.threads }
  send({
    type: 'ready',
    loadMs: performance.now() - started,
    contextSize: sequenceContextSize,
    trainContextSize: model.trainContextSize,
    buildType: llama.buildType,
    threads: choice.threads,
    measuredTokensPerSecond: choice.measured,
  })
}

function acquireSequence(): Promise<LlamaContextSequence> {
  const seq = freeSequences.pop()
  if (seq) return Promise.resolve(seq)
  return new Promise((resolve) => waitingForSequence.push(resolve))
}

function releaseSequence(seq: LlamaContextSequence) {
  const next = waitingForSequence.shift()
  if (next) next(seq)
  else freeSequences.push(seq)
}

function toHistory(messages: readonly ChatMessage[]): ChatHistoryItem[] {
  return messages.map((m): ChatHistoryItem => {
    if (m.role === 'system') return { type: 'system', text: m.content }
    if (m.role === 'user') return { type: 'user', text: m.content }
    return { type: 'model', response: [m.content] }
  })
}

function samplingFor(options: SamplingOptions) {
  return {
    temperature: options.temperature ?? 0.8,
    topK: options.topK ?? 40,
    topP: options.topP ?? 0.9,
    minP: options.minP,
    seed: options.seed,
    repeatPenalty:
      options.repeatPenalty === undefined || options.repeatPenalty === 1
        ? (false as const)
        : { penalty: options.repeatPenalty },
    customStopTriggers: options.stop && options.stop.length > 0 ? options.stop : undefined,
  }
}

/** When a request arrived and its first and last tokens came: the timings its `done` reports. */
function generationClock() {
  const received = performance.now()
  let first = 0
  let last = 0
  return {
    token() {
      last = performance.now()
      if (first === 0) first = last
    },
    timings: () => ({
      promptEvalMs: (first || performance.now()) - received,
      evalMs: first ? last - first : 0,
    }),
  }
}

async function generateOnServer(req: GenerateMessage, srv: LlamaServer) {
  const abort = new AbortController()
  active.set(req.id, abort)
  const clock = generationClock()
  const relay = tokenRelay(req.id)
  try {
    const { tokens: prompt, stops } = renderPrompt(req)
    assertFits(prompt.length + 1)
    // LlamaChat starts a new response at its first non-space character; answers must not
    // depend on the engine (a spot check re-tokenizes the text a worker returned).
    let trimStart = req.mode === 'chat' && req.messages?.at(-1)?.role !== 'assistant'
    const result = await srv.complete(
      prompt,
      { ...req.options, extraStops: stops },
      abort.signal,
      (piece, tokens) => {
        clock.token()
        relay.counted(tokens)
        const text = trimStart ? piece.trimStart() : piece
        if (text === '') return
        trimStart = false
        relay.text(text)
      },
    )
    await relay.flush()
    send({
      type: 'done',
      id: req.id,
      stats: {
        reason: result.reason,
        promptTokens: prompt.length,
        outputTokens: result.outputTokens,
        ...clock.timings(),
      },
    })
  } catch (err) {
    await relay.flush()
    sendError(req.id, err)
  } finally {
    active.delete(req.id)
  }
}

async function generate(req: GenerateMessage) {
  if (server) return generateOnServer(req, server)
  const abort = new AbortController()
  active.set(req.id, abort)
  const clock = generationClock()
  const relay = tokenRelay(req.id)
  const seq = await acquireSequence()
  let outputTokens = 0
  const meterBefore = seq.tokenMeter.getState()
  try {
    if (!lib || !model || !context) throw new Error('generate before load')
    // The text the output continues: the raw prompt, or an assistant message being continued.
    // node-llama-cpp detokenizes the first output chunk on its own, which drops a leading space
    // (SentencePiece's "▁tick" becomes "tick"); detokenized after this text it keeps it, as
    // llama.cpp's own server answers. Without that, a stream continued after a mesh failover
    // would glue its seam together ("…tock" + "tick").
    const continues =
      req.mode === 'completion'
        ? (req.prompt ?? '')
        : req.messages?.at(-1)?.role === 'assistant'
          ? req.messages.at(-1)!.content
          : ''
    let firstChunk: Token[] | undefined
    const onToken = (tokens: readonly Token[]) => {
      if (outputTokens === 0) firstChunk = [...tokens]
      clock.token()
      outputTokens += tokens.length
      relay.counted(tokens.length)
    }
    const onTextChunk = (chunk: string) => {
      let text = chunk
      if (firstChunk !== undefined && continues !== '' && model !== undefined) {
        text = model.detokenize(firstChunk, false, model.tokenize(continues.slice(-256)).slice(-16))
      }
      firstChunk = undefined
      relay.text(text)
    }
    const common = {
      ...samplingFor(req.options),
      maxTokens: req.options.maxTokens,
      signal: abort.signal,
      stopOnAbortSignal: true,
      onToken,
      onTextChunk,
    }
    let stopReason: string
    if (req.mode === 'chat') {
      const history = toHistory(req.messages ?? [])
      const chat = new lib.LlamaChat({ contextSequence: seq, chatWrapper, autoDisposeSequence: false })
      try {
        assertFits(model.tokenize(history.map((h) => ('text' in h ? h.text : '')).join('\n')).length)
        const res = await chat.generateResponse(history, {
          ...common,
          contextShift: { strategy: 'eraseFirstResponseAndKeepFirstSystem' },
        })
        stopReason = res.metadata.stopReason
      } finally {
        chat.dispose({ disposeSequence: false })
      }
    } else {
      const completion = new lib.LlamaCompletion({ contextSequence: seq, autoDisposeSequence: false })
      try {
        assertFits(model.tokenize(req.prompt ?? '').length + 1)
        const res = await completion.generateCompletionWithMeta(req.prompt ?? '', common)
        stopReason = res.metadata.stopReason
      } finally {
        completion.dispose({ disposeSequence: false })
      }
    }
    await relay.flush()
    const used = seq.tokenMeter.diff(meterBefore)
    const reason: DoneReason =
      stopReason === 'maxTokens' ? 'length' : stopReason === 'abort' ? 'cancel' : 'stop'
    send({
      type: 'done',
      id: req.id,
      stats: { reason, promptTokens: used.usedInputTokens, outputTokens, ...clock.timings() },
    })
  } catch (err) {
    await relay.flush()
    sendError(req.id, err)
  } finally {
    active.delete(req.id)
    releaseSequence(seq)
  }
}

/**
 * The tokens node-llama-cpp's `generate` feeds the model for this request (LlamaCompletion
 * prepends BOS where the vocabulary wants it; LlamaChat renders the history through the chat
 * wrapper and opens the model's turn), which is what the llama-server engine sends and what
 * scoring rebuilds; for chat also the template's own stop texts (special tokens end
 * generation anyway).
 */
function renderPrompt(req: Pick<ScoreMessage, 'mode' | 'prompt' | 'messages'>): {
  tokens: number[]
  stops: string[]
} {
  if (!model || !chatWrapper) throw new Error('prompt before load')
  if (req.mode === 'chat') {
    // A last assistant message is a response being continued (mesh failover): the model's turn
    // is already open. Otherwise LlamaChat opens an empty one.
    const history = toHistory(req.messages ?? [])
    if (history.at(-1)?.type !== 'model') history.push({ type: 'model', response: [] })
    const state = chatWrapper.generateContextState({ chatHistory: history })
    const stops = state.stopGenerationTriggers
      .filter((t) => t.values.every((v) => typeof v === 'string'))
      .map((t) => t.values.join(''))
      .filter((t) => t !== '')
    return { tokens: [...state.contextText.tokenize(model.tokenizer)], stops }
  }
  const bos = model.tokens.shouldPrependBosToken ? model.tokens.bos : null
  const text = model.tokenize(req.prompt ?? '', false, bos === null ? undefined : 'trimLeadingSpace')
  return { tokens: bos === null ? [...text] : [bos, ...text], stops: [] }
}

/** With the llama-server engine: the full model and one sequence for scoring, loaded once. */
function ensureScoringModel(): Promise<void> {
  scoringModel ??= (async () => {
    if (!llama || !loaded) throw new Error('score before load')
    const full = await llama.loadModel({ modelPath: loaded.modelPath })
    context = await full.createContext({
      contextSize: sequenceContextSize,
      sequences: 1,
      threads: loaded.threads,
    })
    freeSequences.push(context.getSequence())
  })()
  return scoringModel
}

async function score(req: ScoreMessage) {
  try {
    if (server) await ensureScoringModel()
  } catch (err) {
    sendError(req.id, err)
    return
  }
  const seq = await acquireSequence()
  try {
    if (!model) throw new Error('score before load')
    const promptTokens = renderPrompt(req).tokens
    const splits = []
    for (const claimedTokens of outputTokenizations(model, req.output)) {
      assertFits(promptTokens.length + claimedTokens.length)
      const positions = pickCheckPositions(req.seed, claimedTokens.length, req.count)
      const evidence = await scoreOnSequence(seq, { promptTokens, claimedTokens, positions, topK: req.topK })
      splits.push({ tokens: claimedTokens.length, evidence })
    }
    send({ type: 'scored', id: req.id, promptTokens: promptTokens.length, splits })
  } catch (err) {
    sendError(req.id, err)
  } finally {
    // Generation must not reuse our prefill as its own prefix.
    await seq.clearHistory().catch(() => {})
    releaseSequence(seq)
  }
}

function sendError(id: string, err: unknown) {
  const typed = err as { code?: unknown }
  const code = typeof typed.code === 'string' && typed.code.startsWith('E_') ? typed.code : 'E_INTERNAL'
  send({ type: 'error', id, code, message: err instanceof Error ? err.message : String(err) })
}

function assertFits(promptTokens: number) {
  if (promptTokens >= sequenceContextSize) {
    throw Object.assign(
      new Error(
        `the prompt is ${promptTokens} tokens; the context holds ${sequenceContextSize} (raise num_ctx)`,
      ),
      { code: 'E_CONTEXT_OVERFLOW' },
    )
  }
}

const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  let msg: ReturnType<typeof toRunnerSchema.parse>
  try {
    msg = toRunnerSchema.parse(JSON.parse(line))
  } catch (err) {
    send({ type: 'error', code: 'E_BAD_REQUEST', message: `runner: bad message: ${String(err)}` })
    return
  }
  if (msg.type === 'load') {
    load(msg).catch((err: unknown) => {
      send({
        type: 'error',
        code: 'E_INVALID_MODEL_FILE',
        message: err instanceof Error ? err.message : String(err),
      })
      process.exit(3)
    })
  } else if (msg.type === 'generate') {
    void generate(msg)
  } else if (msg.type === 'score') {
    void score(msg)
  } else if (msg.type === 'cancel') {
    active.get(msg.id)?.abort()
  } else {
    server?.stop()
    process.exit(0)
  }
})
// The daemon closing our stdin means it is gone: never outlive it (nor may the server).
lines.on('close', () => {
  server?.stop()
  process.exit(0)
})
