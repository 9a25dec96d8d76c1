// The HTTP API's request schemas and response types, imported by both the server and the
// client. Field names follow Ollama's and OpenAI's APIs exactly, so their clients work.

import { z } from 'zod'

/** Ollama's `options`. Unknown keys are ignored, as Ollama does. */
export const ollamaOptionsSchema = z
  .object({
    temperature: z.number().min(0).max(100),
    top_p: z.number().min(0).max(1),
    top_k: z.number().int().min(0),
    min_p: z.number().min(0).max(1),
    seed: z.number().int(),
    repeat_penalty: z.number().min(0),
    num_predict: z.number().int(),
    num_ctx: z.number().int().min(1).max(1_048_576),
    stop: z.array(z.string()).max(16),
  })
  .partial()
export type OllamaOptions = z.infer<typeof ollamaOptionsSchema>

/** Ollama's keep_alive: a duration string ("5m"), or a number of seconds; negative = forever. */
export const keepAliveSchema = z.union([z.string(), z.number()]).optional()

export const generateRequestSchema = z.object({
  model: z.string().min(1),
  prompt: z.string().optional(),
  system: z.string().optional(),
  raw: z.boolean().optional(),
  stream: z.boolean().optional(),
  format: z.unknown().optional(),
  images: z.array(z.string()).optional(),
  options: ollamaOptionsSchema.optional(),
  keep_alive: keepAliveSchema,
})
export type GenerateRequest = z.infer<typeof generateRequestSchema>

export const chatRequestSchema = z.object({
  model: z.string().min(1),
  messages: z
    .array(
      z.object({
        role: z.enum(['system', 'user', 'assistant', 'tool']),
        content: z.string(),
        images: z.array(z.string()).optional(),
      }),
    )
    .default([]),
  stream: z.boolean().optional(),
  format: z.unknown().optional(),
  options: ollamaOptionsSchema.optional(),
  keep_alive: keepAliveSchema,
})
export type ChatRequest = z.infer<typeof chatRequestSchema>

export const modelNameRequestSchema = z
  .object({ model: z.string().min(1).optional(), name: z.string().min(1).optional() })
  .refine((v) => v.model !== undefined || v.name !== undefined, { message: 'model is required' })

export const pullRequestSchema = z
  .object({
    model: z.string().min(1).optional(),
    name: z.string().min(1).optional(),
    /** native extension: the name to store a URL pull under */
    as: z.string().min(1).optional(),
    sha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/)
      .optional(),
    stream: z.boolean().optional(),
    insecure: z.boolean().optional(),
  })
  .refine((v) => v.model !== undefined || v.name !== undefined, { message: 'model is required' })

/** OpenAI's `stop`: a string or up to 4 strings. */
const openaiStopSchema = z.union([z.string(), z.array(z.string()).max(16)]).nullish()

const openaiContentSchema = z.union([
  z.string(),
  z.array(z.object({ type: z.string(), text: z.string().optional() })),
  z.null(),
])

const openaiSamplingSchema = {
  model: z.string().min(1),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
  max_tokens: z.number().int().nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  seed: z.number().int().nullish(),
  stop: openaiStopSchema,
  n: z.number().int().min(1).max(1).nullish(),
  frequency_penalty: z.number().nullish(),
  presence_penalty: z.number().nullish(),
  user: z.string().nullish(),
}

export const openaiChatRequestSchema = z.object({
  ...openaiSamplingSchema,
  max_completion_tokens: z.number().int().nullish(),
  messages: z
    .array(
      z.object({
        role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
        content: openaiContentSchema,
      }),
    )
    .min(1),
})
export type OpenAIChatRequest = z.infer<typeof openaiChatRequestSchema>

export const openaiCompletionRequestSchema = z.object({
  ...openaiSamplingSchema,
  prompt: z.union([z.string(), z.array(z.string()).length(1)]),
})
export type OpenAICompletionRequest = z.infer<typeof openaiCompletionRequestSchema>

export interface OllamaModelDetails {
  parent_model: string
  format: string
  family: string
  families: string[]
  parameter_size: string
  quantization_level: string
}

export interface OllamaTagsModel {
  name: string
  model: string
  modified_at: string
  size: number
  digest: string
  details: OllamaModelDetails
  /** Extension: offered by peers in the mesh, not held on this node. */
  remote?: boolean
  /** Extension: how many peers offer a remote model. */
  peers?: number
}

export interface OllamaPsModel {
  name: string
  model: string
  size: number
  digest: string
  details: OllamaModelDetails
  expires_at: string
  size_vram: number
  context_length: number
}

/** A peer as GET /substrate/v1/peers shows it: its last capacity record and our measurements. */
export interface PeerInfo {
  id: string
  models: Array<{ name: string; digest: string; loaded: boolean }>
  freeSlots: number
  /** decode speed the peer measured serving jobs; 0 until it served one */
  tokensPerSecond: number
  queueDepth: number
  /** round trip measured by ping; null when not measured yet */
  latencyMs: number | null
  /** when its last capacity record arrived (ISO 8601) */
  lastSeen: string
  /** how we are connected now: directly, only through a relay, or not (gossip reached us through others) */
  connection: 'direct' | 'relayed' | null
  /** what our own jobs on this peer taught us (absent until we sent it one) */
  standing?: {
    /** our jobs it is running now */
    inFlight: number
    /** fades with time (half-life 1 min); ≥ 0.5 ranks the peer after peers in good standing */
    penalty: number
    successes: number
    failures: number
    lastOutcome?: 'success' | 'busy' | 'refused' | 'timeout' | 'gone' | 'failed'
  }
}

/** Capacity gossip as this node received it: records accepted and dropped, and peers' gossip scores. */
export interface GossipInfo {
  published: number
  accepted: number
  rejected: number
  rateLimited: number
  flooded: number
  overflow: number
  /** gossipsub's score of each connected peer; negative after invalid records or a flood */
  scores: Array<{ id: string; score: number }>
}

/** How other nodes can reach this one. */
export interface ReachabilityInfo {
  /**
   * `public`: AutoNAT confirmed a public address; `relayed`: reachable through a relay
   * reservation; `private`: only private or unconfirmed addresses.
   */
  status: 'public' | 'relayed' | 'private'
  addresses: Array<{ addr: string; type: string; verified: boolean; relayed: boolean; public: boolean }>
  /** relays this node holds a reservation on */
  relays: string[]
  /** when this node serves as a relay (mesh.relayServe) */
  relayServing: { reservations: number; maxReservations: number } | null
}

export interface PeersResponse {
  /** false when this node runs with mesh.enabled = false */
  enabled: boolean
  id: string | null
  /** this node's mesh addresses, each with /p2p/<id> */
  addrs: string[]
  /** null when the mesh is off */
  reachability: ReachabilityInfo | null
  peers: PeerInfo[]
  /** absent when the mesh is off */
  gossip?: GossipInfo
}

/** A mesh job's receipt as the API shows it; `signed` (base64 envelope) only in /substrate/v1/receipts. */
export interface ReceiptInfo {
  /** CID of the countersigned receipt */
  cid: string
  /** CID of the signed job manifest */
  job: string
  model: string
  /** signed the receipt */
  worker: string
  /** countersigned it */
  requester: string
  promptTokens: number
  outputTokens: number
  computeMs: number
  outputHash: string
  signed?: string
}

/** The `substrate` extension field on the final chunk of an answer the mesh served. */
export interface ServedInfo {
  worker: string
  job: string
  /** set when this worker took over mid-stream from one that failed */
  resumedAfterTokens?: number
  receipt: ReceiptInfo
}

export interface ErrorBody {
  error: string
  code: string
  hint?: string
}

/** One member's balance (src/ledger/balances.ts MemberBalance). Credits ≈ output tokens. */
export interface CreditsBalance {
  member: string
  earned: number
  spent: number
  /** the part of `spent` the daily floors paid for */
  floorCovered: number
  /** earned − (spent − floorCovered) */
  balance: number
  floorPerDay: number
  floorLeftToday: number
  vouched: boolean
  frozen: boolean
}

/** GET /substrate/v1/credits: a member's balance and the receipts behind it. */
export interface CreditsResponse {
  /** this daemon's node id, and whether `member` is the member it is bound to */
  node: string
  self: boolean
  balance: CreditsBalance
  /** the member's nodes that appear in receipts */
  nodes: string[]
  /** per counterparty and UTC day; `earned` is after the daily per-counterparty cap */
  earnings: Array<{ day: string; counterparty: string; gross: number; earned: number; receipts: string[] }>
  /** per UTC day; the floor pays first */
  spending: Array<{ day: string; gross: number; floorCovered: number; charged: number; receipts: string[] }>
  /** receipts that count for nothing, and why */
  excluded: Array<{
    receipt: string
    role: 'worker' | 'requester'
    reason: 'same-member' | 'void-worker' | 'not-carried'
  }>
}

/** GET /substrate/v1/ledger/balances: every member that earned or spent, sorted by id. */
export interface LedgerBalancesResponse {
  balances: CreditsBalance[]
  /** equal on two nodes when they hold the same ledger (see LedgerStatsResponse) */
  headsDigest: string
}

/** One op as GET /substrate/v1/ledger/log shows it. */
export interface LedgerOpInfo {
  cid: string
  author: string
  seq: number
  kind: string
  /** ISO 8601, signed by the author */
  at: string
  /** what the balance fold read from it (src/ledger/ops.ts OpFacts) */
  facts: Record<string, unknown>
}

/** POST /substrate/v1/ledger/vouch: the vouch op this node's member signed, and its effect. */
export interface LedgerVouchResponse {
  /** the member vouched for, and the member who signed the vouch (this node's) */
  member: string
  voucher: string
  /** the vouch op: its CID and its seq in the voucher's log */
  cid: string
  seq: number
  /** after this op: every member that vouched for `member`, and whether it now has the full floor */
  vouchers: string[]
  vouched: boolean
  floorPerDay: number
}

export interface LedgerStatsResponse {
  node: string
  member: string
  ops: number
  authors: number
  members: number
  receipts: number
  frozen: string[]
  balances: number
  /** sha-256 over every author's head and the frozen set */
  headsDigest: string
  checkpoint: { through: number; savedAt: string } | null
}

export interface LedgerVerifyResponse {
  ok: boolean
  ops: number
  authors: number
  problems: Array<{ author: string; seq: number; problem: string }>
  balancesMatch: boolean
  mismatched: string[]
  tookMs: number
}
