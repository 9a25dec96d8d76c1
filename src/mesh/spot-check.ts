// `/substrate/spot-check/1`, both sides on one node (DESIGN.md, step 8). As a requester: a
// countersigned receipt sampled at `rate` (decided from its CID, so every node agrees) is
// sent, with the manifest and the output it received, to a third node that holds the model
// (not the worker, not us). As a checker: admit the request (spot-check-codec.ts), run the
// teacher-forced prefill in the model's sandboxed runner (Runtime.score), judge it, sign a
// `spot-check-verdict` op in our own ledger log and, on a proven lie, a `fraud-proof` op;
// both go back to the requester, and to everyone else by ledger sync.

import { peerIdFromString } from '@libp2p/peer-id'
import { isErrorCode, SubstrateError, toSubstrateError } from '../errors.ts'
import type { Identity } from '../identity/keys.ts'
import type { Ledger } from '../ledger/ledger.ts'
import {
  DEFAULT_JUDGE,
  DEFAULT_SPOT_CHECK_RATE,
  fraudProofDraft,
  type JudgeInit,
  type Judgement,
  judgeTeacherForced,
  shouldSpotCheck,
  verdictDraft,
} from '../ledger/verify-receipt.ts'
import type { Logger } from '../logger.ts'
import type { ModelRecord } from '../models/types.ts'
import type { Runtime } from '../runtime/runtime.ts'
import { errorFrame, frameChannel } from './job-codec.ts'
import type { CountersignedJob } from './job-requester.ts'
import type { MeshNode } from './libp2p-node.ts'
import {
  admitCheck,
  type CheckableJob,
  type CheckReplyFrame,
  type CheckRequestFrame,
  checkReplySchema,
  checkRequestSchema,
  MAX_CHECK_OUTPUT_CHARS,
  MAX_CHECK_REPLY_BYTES,
  MAX_CHECK_REQUEST_BYTES,
  SPOT_CHECK_PROTOCOL,
  verifyVerdictOps,
} from './spot-check-codec.ts'

export { SPOT_CHECK_PROTOCOL } from './spot-check-codec.ts'

export interface SpotCheckComponents {
  mesh: MeshNode
  identity: Identity
  logger: Logger
  ledger: Pick<Ledger, 'append' | 'log'>
  runtime: Pick<Runtime, 'score'>
  /** The local model with this digest, if we hold it (a checker runs its own copy). */
  modelByDigest(digest: string): ModelRecord | undefined
  /** Peers offering a model, best first (the capacity view): who can check a receipt. */
  candidates(digest: string): string[]
  /** Why this node checks nothing for others right now (e.g. unsandboxed runners). */
  refusal?: () => SubstrateError | undefined
}

export interface SpotCheckInit {
  /** Share of our countersigned receipts sent for a check (governance later). */
  rate?: number
  /** Output positions compared per check. */
  positions?: number
  judge?: JudgeInit
  /** Checks this node runs for others at once; more are refused as busy. */
  maxConcurrentChecks?: number
  /** Our receipts waiting for a checker; beyond this the oldest is dropped. */
  maxPending?: number
  /** A check may have to load the model: how long a requester waits for the verdict. */
  checkTimeoutMs?: number
  requestTimeoutMs?: number
  dialTimeoutMs?: number
  /** Checkers tried per receipt when one is busy, gone or lacks the model. */
  maxCheckers?: number
}

export type CheckableReceipt = CountersignedJob

export type SpotCheckResult =
  | {
      receipt: string
      worker: string
      checker: string
      honest: boolean
      sampled: number
      implausible: number
    }
  | { receipt: string; worker: string; checker?: string; error: SubstrateError }

export interface SpotCheck {
  start(): Promise<void>
  stop(): Promise<void>
  /** Queues a check of this receipt if it is sampled; true when it is. */
  consider(job: CheckableReceipt): boolean
  /** Asks `checker` to check a receipt now (what `consider` does for sampled ones). */
  requestCheck(checker: string, job: CheckableReceipt): Promise<SpotCheckResult>
  /** Called with the outcome of each check this node asked for. */
  onResult(listener: (result: SpotCheckResult) => void): () => void
  /** Checks this node is running for others right now. */
  activeChecks(): number
}

const RETRYABLE = new Set(['E_WORKER_BUSY', 'E_MODEL_NOT_FOUND', 'E_PEER_GONE', 'E_PEER_TIMEOUT'])

export function createSpotCheck(components: SpotCheckComponents, init: SpotCheckInit = {}): SpotCheck {
  const log = components.logger.child('spot-check')
  const libp2p = components.mesh.libp2p
  const self = components.identity.id
  const rate = init.rate ?? DEFAULT_SPOT_CHECK_RATE
  const positions = init.positions ?? 16
  const judge = { ...DEFAULT_JUDGE, ...init.judge }
  const maxConcurrentChecks = init.maxConcurrentChecks ?? 1
  const maxPending = init.maxPending ?? 32
  const checkTimeoutMs = init.checkTimeoutMs ?? 120_000
  const requestTimeoutMs = init.requestTimeoutMs ?? 10_000
  const dialTimeoutMs = init.dialTimeoutMs ?? 10_000
  const maxCheckers = init.maxCheckers ?? 3
  const resultListeners = new Set<(result: SpotCheckResult) => void>()
  let active = 0
  let running = false

  // --- checker side ------------------------------------------------------------------

  /** Judges every canonical split of the output; the most favourable reading decides. */
  async function judgeJob(job: CheckableJob, model: ModelRecord): Promise<Judgement> {
    const { manifest, receipt, output } = job
    const scored = await withTimeout(
      components.runtime.score({
        model,
        mode: manifest.mode,
        ...(manifest.prompt === undefined ? {} : { prompt: manifest.prompt }),
        ...(manifest.messages === undefined ? {} : { messages: manifest.messages }),
        output,
        seed: receipt.cid,
        count: positions,
        topK: judge.topK,
      }),
      checkTimeoutMs,
      'the teacher-forced check',
    )
    // The most favourable reading decides: honest if any split is, and among equals the one
    // with the smallest implausible share.
    const share = (j: Judgement) => j.implausible / Math.max(1, j.sampled)
    let best: Judgement = { honest: true, sampled: 0, implausible: 0, evidence: [] }
    for (const [i, split] of scored.splits.entries()) {
      const j = judgeTeacherForced(split.evidence, judge)
      const better = j.honest !== best.honest ? j.honest : share(j) < share(best)
      if (i === 0 || better) best = j
    }
    return best
  }

  async function serveCheck(frame: CheckRequestFrame, remote: string): Promise<CheckReplyFrame> {
    const job = admitCheck(frame, remote, self)
    const model = components.modelByDigest(job.receipt.receipt.model)
    if (model === undefined) {
      throw new SubstrateError('E_MODEL_NOT_FOUND', `this node does not hold ${job.receipt.receipt.model}`)
    }
    const judgement = await judgeJob(job, model)
    const verdict = components.ledger.append(components.identity, verdictDraft(job.receipt, judgement))
    const proof = judgement.honest
      ? undefined
      : components.ledger.append(components.identity, fraudProofDraft(job.receipt, judgement))
    log.info(judgement.honest ? 'receipt checked: honest' : 'receipt checked: the worker lied', {
      receipt: job.receipt.cid,
      worker: job.receipt.worker,
      sampled: judgement.sampled,
      implausible: judgement.implausible,
    })
    return proof === undefined
      ? { t: 'verdict', verdict: verdict.bytes }
      : { t: 'verdict', verdict: verdict.bytes, proof: proof.bytes }
  }

  async function handle(stream: Parameters<Parameters<typeof libp2p.handle>[1]>[0], remote: string) {
    const ch = frameChannel<CheckRequestFrame, CheckReplyFrame>(
      stream,
      checkRequestSchema,
      MAX_CHECK_REQUEST_BYTES,
    )
    let frame: CheckRequestFrame
    try {
      frame = await ch.read({ timeoutMs: requestTimeoutMs })
    } catch (err) {
      await ch.write(errorFrame('refuse', toSubstrateError(err)), 2_000).catch(() => {})
      ch.reset('bad check request')
      return
    }
    let reply: CheckReplyFrame
    const refusal = components.refusal?.()
    if (refusal !== undefined) reply = errorFrame('refuse', refusal)
    else if (active >= maxConcurrentChecks) {
      reply = errorFrame(
        'refuse',
        new SubstrateError('E_WORKER_BUSY', `all ${maxConcurrentChecks} check slots are busy`),
      )
    } else {
      active++
      try {
        reply = await serveCheck(frame, remote)
      } catch (err) {
        const error = toSubstrateError(err)
        log.info('refused a check', { from: remote, code: error.code, error: error.message })
        reply = errorFrame('refuse', error)
      } finally {
        active--
      }
    }
    await ch.write(reply, 10_000).catch(() => {})
    await ch.close()
  }

  // --- requester side ----------------------------------------------------------------

  async function requestCheck(checker: string, job: CheckableReceipt): Promise<SpotCheckResult> {
    const base = { receipt: job.receipt.cid, worker: job.receipt.worker, checker }
    try {
      if (checker === self || checker === job.receipt.worker) {
        throw new SubstrateError('E_INVALID_ARGUMENT', 'the checker must be a third node')
      }
      if (job.output.length > MAX_CHECK_OUTPUT_CHARS) {
        throw new SubstrateError(
          'E_RECORD_TOO_LARGE',
          `outputs over ${MAX_CHECK_OUTPUT_CHARS} characters are not checked`,
        )
      }
      let peer: ReturnType<typeof peerIdFromString>
      try {
        peer = peerIdFromString(checker)
      } catch (cause) {
        throw new SubstrateError('E_INVALID_ARGUMENT', `not a peer id: ${checker.slice(0, 64)}`, { cause })
      }
      let raw: Awaited<ReturnType<typeof libp2p.dialProtocol>>
      try {
        raw = await libp2p.dialProtocol(peer, SPOT_CHECK_PROTOCOL, {
          signal: AbortSignal.timeout(dialTimeoutMs),
        })
      } catch (cause) {
        throw new SubstrateError(
          'E_PEER_GONE',
          `cannot open a spot-check stream to ${checker}: ${String(cause)}`,
          {
            cause,
          },
        )
      }
      const ch = frameChannel<CheckReplyFrame, CheckRequestFrame>(
        raw,
        checkReplySchema,
        MAX_CHECK_REPLY_BYTES,
      )
      try {
        await ch.write({ t: 'check', receipt: job.receipt.bytes, manifest: job.manifest, output: job.output })
        const reply = await ch.read({ timeoutMs: checkTimeoutMs + requestTimeoutMs })
        if (reply.t === 'refuse') {
          const code = isErrorCode(reply.code) ? reply.code : 'E_PROTOCOL'
          throw new SubstrateError(code, `checker ${checker} refused: ${reply.message}`)
        }
        const ops = verifyVerdictOps(reply, checker, job.receipt.cid)
        // Lands now where the checker's log is known up to here; otherwise ledger sync brings it.
        components.ledger.log.ingestMany(
          ops.proof === undefined ? [ops.verdict.bytes] : [ops.verdict.bytes, ops.proof.bytes],
        )
        return { ...base, honest: ops.honest, sampled: ops.sampled, implausible: ops.implausible }
      } finally {
        await ch.close()
      }
    } catch (err) {
      return { ...base, error: toSubstrateError(err) }
    }
  }

  // Our sampled receipts wait here for a checker, one at a time: checks are rare (5 %) and
  // must not compete with the jobs themselves.
  const pending: CheckableReceipt[] = []
  let draining: Promise<void> | undefined

  async function checkOne(job: CheckableReceipt): Promise<SpotCheckResult> {
    const checkers = components
      .candidates(job.receipt.receipt.model)
      .filter((p) => p !== self && p !== job.receipt.worker)
      .slice(0, maxCheckers)
    let last: SpotCheckResult = {
      receipt: job.receipt.cid,
      worker: job.receipt.worker,
      error: new SubstrateError('E_MODEL_NOT_FOUND', 'no third node offers the model to check this receipt'),
    }
    for (const checker of checkers) {
      if (!running) break
      last = await requestCheck(checker, job)
      if (!('error' in last) || !RETRYABLE.has(last.error.code)) break
    }
    return last
  }

  function drain() {
    draining ??= (async () => {
      while (running && pending.length > 0) {
        const result = await checkOne(pending.shift()!)
        if ('error' in result) {
          log.info('spot check not done', {
            receipt: result.receipt,
            code: result.error.code,
            error: result.error.message,
          })
        } else if (!result.honest) {
          log.warn('a worker was caught lying', {
            worker: result.worker,
            receipt: result.receipt,
            checker: result.checker,
          })
        }
        for (const listener of resultListeners) listener(result)
      }
    })().finally(() => {
      draining = undefined
    })
  }

  return {
    async start() {
      running = true
      await libp2p.handle(
        SPOT_CHECK_PROTOCOL,
        (stream, connection) => {
          handle(stream, connection.remotePeer.toString()).catch((err: unknown) => {
            stream.abort(toSubstrateError(err))
          })
        },
        { maxInboundStreams: maxConcurrentChecks + 8 },
      )
    },
    async stop() {
      running = false
      pending.length = 0
      await libp2p.unhandle(SPOT_CHECK_PROTOCOL)
      await draining
    },
    consider(job) {
      if (!running || !shouldSpotCheck(job.receipt.cid, rate)) return false
      if (pending.length >= maxPending) {
        const dropped = pending.shift()!
        log.warn('too many receipts wait for a check; dropping the oldest', { receipt: dropped.receipt.cid })
      }
      pending.push(job)
      drain()
      return true
    },
    requestCheck,
    onResult(listener) {
      resultListeners.add(listener)
      return () => resultListeners.delete(listener)
    },
    activeChecks: () => active,
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new SubstrateError('E_PEER_TIMEOUT', `${what} took longer than ${ms} ms`)),
      ms,
    )
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}
