// The runner protocol: JSON lines on the runner's stdin/stdout. The daemon is the only
// speaker on stdin; the runner answers on stdout and logs on stderr. Every message from
// the runner is validated on arrival: a runner is a process we may not trust (it runs a
// model file from a stranger) and it may be half-dead.

import { z } from 'zod'

export const samplingOptionsSchema = z.object({
  temperature: z.number().min(0).max(100).optional(),
  topK: z.number().int().min(0).optional(),
  topP: z.number().min(0).max(1).optional(),
  minP: z.number().min(0).max(1).optional(),
  seed: z.number().int().optional(),
  repeatPenalty: z.number().min(0).optional(),
  /** tokens to generate at most; undefined = until end of sequence or context */
  maxTokens: z.number().int().min(0).optional(),
  stop: z.array(z.string()).max(16).optional(),
})
export type SamplingOptions = z.infer<typeof samplingOptionsSchema>

export const chatMessageSchema = z.object({
  role: z.enum(['system', 'user', 'assistant']),
  content: z.string(),
})
export type ChatMessage = z.infer<typeof chatMessageSchema>

export const loadMessageSchema = z.object({
  type: z.literal('load'),
  modelPath: z.string(),
  contextSize: z.number().int().positive(),
  parallel: z.number().int().positive(),
  /** 0 = choose by measurement */
  threads: z.number().int().nonnegative(),
  /** run the model in llama.cpp's own server at this path (engine.ts); absent: node-llama-cpp */
  llamaServer: z.string().optional(),
  /** longest a token waits to share a `token` message with the ones after it; 0: every turn */
  tokenWindowMs: z.number().min(0).max(1000).optional(),
})

/** The runner's token window unless the load message says otherwise. */
export const DEFAULT_TOKEN_WINDOW_MS = 0

export const generateMessageSchema = z.object({
  type: z.literal('generate'),
  id: z.string(),
  /** completion: `prompt` is fed as-is; chat: `messages` go through the model's template */
  mode: z.enum(['completion', 'chat']),
  prompt: z.string().optional(),
  messages: z.array(chatMessageSchema).optional(),
  options: samplingOptionsSchema,
})
export type GenerateMessage = z.infer<typeof generateMessageSchema>

/**
 * A teacher-forced check of a claimed output (a spot check of another node's receipt): the
 * runner builds the prompt exactly as `generate` would, splits `output` into tokens in each
 * canonical way (teacher-forced.ts), picks `count` positions per split from `seed` (the
 * receipt's CID) and returns the model's view at them. Generates nothing.
 */
export const scoreMessageSchema = z.object({
  type: z.literal('score'),
  id: z.string(),
  mode: z.enum(['completion', 'chat']),
  prompt: z.string().optional(),
  messages: z.array(chatMessageSchema).optional(),
  output: z.string(),
  seed: z.string(),
  count: z.number().int().min(1).max(64),
  topK: z.number().int().min(1).max(16),
})
export type ScoreMessage = z.infer<typeof scoreMessageSchema>

const scoredPositionSchema = z.object({
  position: z.number().int().nonnegative(),
  claimed: z.number().int().nonnegative(),
  claimedProb: z.number().min(0).max(1),
  topK: z.array(z.object({ token: z.number().int().nonnegative(), prob: z.number().min(0).max(1) })).max(16),
})

/** One canonical split of the claimed output and the model's view at its sampled positions. */
export const scoredSplitSchema = z.object({
  tokens: z.number().int().nonnegative(),
  evidence: z.array(scoredPositionSchema).max(64),
})
export type ScoredSplit = z.infer<typeof scoredSplitSchema>

export const toRunnerSchema = z.discriminatedUnion('type', [
  loadMessageSchema,
  generateMessageSchema,
  scoreMessageSchema,
  z.object({ type: z.literal('cancel'), id: z.string() }),
  z.object({ type: z.literal('shutdown') }),
])
export type ToRunner = z.infer<typeof toRunnerSchema>

export const doneReasonSchema = z.enum(['stop', 'length', 'cancel'])
export type DoneReason = z.infer<typeof doneReasonSchema>

export const generationStatsSchema = z.object({
  reason: doneReasonSchema,
  promptTokens: z.number().int().nonnegative(),
  outputTokens: z.number().int().nonnegative(),
  /** ms from request arrival in the runner to the first output token */
  promptEvalMs: z.number().nonnegative(),
  /** ms from the first to the last output token */
  evalMs: z.number().nonnegative(),
})
export type GenerationStats = z.infer<typeof generationStatsSchema>

export const fromRunnerSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('ready'),
    loadMs: z.number(),
    contextSize: z.number().int(),
    trainContextSize: z.number().int(),
    buildType: z.string(),
    threads: z.number().int().positive(),
    /** decode tokens/s per thread count tried when threads were chosen by measurement */
    measuredTokensPerSecond: z.record(z.string(), z.number()),
  }),
  /** `tokens`: how many output tokens `text` holds (one message may carry several) */
  z.object({
    type: z.literal('token'),
    id: z.string(),
    text: z.string(),
    tokens: z.number().int().nonnegative(),
  }),
  z.object({ type: z.literal('done'), id: z.string(), stats: generationStatsSchema }),
  z.object({
    type: z.literal('scored'),
    id: z.string(),
    promptTokens: z.number().int().nonnegative(),
    splits: z.array(scoredSplitSchema).max(4),
  }),
  z.object({ type: z.literal('error'), id: z.string().optional(), code: z.string(), message: z.string() }),
])
export type FromRunner = z.infer<typeof fromRunnerSchema>

/** A hard cap per line: a runner that prints a gigabyte without a newline is broken. */
export const MAX_LINE_BYTES = 4 * 1024 * 1024

/** Splits a byte stream into lines, refusing absurdly long ones. */
export function createLineSplitter(onLine: (line: string) => void, onOverflow: () => void) {
  let pending = ''
  return (chunk: Buffer | string) => {
    pending += typeof chunk === 'string' ? chunk : chunk.toString('utf8')
    let nl = pending.indexOf('\n')
    while (nl !== -1) {
      const line = pending.slice(0, nl)
      pending = pending.slice(nl + 1)
      if (line.trim() !== '') onLine(line)
      nl = pending.indexOf('\n')
    }
    if (pending.length > MAX_LINE_BYTES) {
      pending = ''
      onOverflow()
    }
  }
}
