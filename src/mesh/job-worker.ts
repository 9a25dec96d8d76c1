// The worker side of `/substrate/job/1`: admit, queue or refuse a manifest, stream tokens as
// the runtime produces them, sign a receipt, and collect the requester's countersignature.
// When every slot is busy a verified job waits in a short queue served in the order of the
// requesters' standing in the credits ledger, with a reserved commons share for requesters at
// floor level (ledger/priority.ts): credits buy priority, never exclusion.
// Generation is stopped the moment the requester cancels, resets the stream or stops
// reading, because every token after that is compute nobody will ever credit.

import type { Connection, Stream } from '@libp2p/interface'
import { SubstrateError, toSubstrateError } from '../errors.ts'
import { cidOf, createMemoryReplayGuard, type Envelope, type ReplayGuard } from '../identity/envelope.ts'
import type { Identity } from '../identity/keys.ts'
import { isFloorLevel, pickAdmissions, type QueuedRequest, type Standing } from '../ledger/priority.ts'
import type { Logger } from '../logger.ts'
import type { GenerationStats } from '../runtime/protocol.ts'
import type { RuntimeEvent } from '../runtime/runtime.ts'
import { createTokenBatcher } from '../runtime/token-batcher.ts'
import {
  errorFrame,
  type FrameChannel,
  frameChannel,
  JOB_PROTOCOL,
  MAX_REQUESTER_FRAME_BYTES,
  type RequesterFrame,
  requesterFrameSchema,
  type WorkerFrame,
} from './job-codec.ts'
import {
  type CountersignedReceipt,
  type JobManifest,
  sha256Digest,
  signReceipt,
  verifyCountersignedReceipt,
  verifyManifest,
} from './job-records.ts'
import type { MeshNode } from './libp2p-node.ts'

export interface AdmittedJob {
  cid: string
  requester: string
  manifest: JobManifest
  envelope: Envelope<JobManifest>
}

/** Runs an admitted job; must stop promptly when `signal` aborts (the runtime's generate does). */
export type RunJob = (job: AdmittedJob, signal: AbortSignal) => AsyncIterable<RuntimeEvent>

export interface JobOutcome {
  job: AdmittedJob
  /** completed: receipt countersigned; unconfirmed: ran, but no valid countersignature came. */
  status: 'completed' | 'unconfirmed' | 'cancelled' | 'failed'
  stats?: GenerationStats
  receipt?: CountersignedReceipt
  error?: SubstrateError
}

export interface JobWorkerComponents {
  mesh: MeshNode
  identity: Identity
  logger: Logger
  hasModel(digest: string): boolean
  runJob: RunJob
  replay?: ReplayGuard
  /** Why this node serves no jobs at all right now (e.g. no sandbox), or undefined when it does. */
  refusal?: () => SubstrateError | undefined
  /** The requester's standing in the credits ledger; without it every requester is at floor level. */
  standingOf?: (requester: string) => Standing
}

export interface JobWorkerInit {
  maxConcurrentJobs?: number
  /** How long a new stream may take to deliver its manifest. */
  manifestTimeoutMs?: number
  /** How long the requester may take to countersign after the last token. */
  countersignTimeoutMs?: number
  /** How long the requester may leave a token frame unread before we give up on it. */
  writeTimeoutMs?: number
  /** Longest a token is held to share a frame with the next ones (see token-batcher.ts). */
  tokenWindowMs?: number
  /** Verified jobs that may wait for a slot; beyond that a busy worker refuses at once. */
  maxQueuedJobs?: number
  /** Longest a job waits for a slot before it is refused with E_WORKER_BUSY. */
  queueTimeoutMs?: number
  /** Share of slots kept for floor-level requesters (ledger/priority.ts). */
  reservedCommonsShare?: number
}

export interface JobWorker {
  start(): Promise<void>
  stop(): Promise<void>
  activeJobs(): number
  /** Jobs waiting for a slot. */
  queuedJobs(): number
  /** Called when a job is admitted or ends: the capacity record changed. */
  onActivity(listener: () => void): () => void
  onJobEnd(listener: (outcome: JobOutcome) => void): () => void
}

type WorkerChannel = FrameChannel<RequesterFrame, WorkerFrame>

interface Waiting {
  request: QueuedRequest
  timer: NodeJS.Timeout
  /** Called once: with undefined when the job got a slot, else with why not. */
  settle(refusal: SubstrateError | undefined): void
}

/** Marks an abort caused by the requester, to whom there is no point writing an error. */
class RequesterLeft extends SubstrateError {}

export function createJobWorker(components: JobWorkerComponents, init: JobWorkerInit = {}): JobWorker {
  const log = components.logger.child('job-worker')
  const libp2p = components.mesh.libp2p
  const replay = components.replay ?? createMemoryReplayGuard()
  const maxConcurrentJobs = init.maxConcurrentJobs ?? 1
  const manifestTimeoutMs = init.manifestTimeoutMs ?? 10_000
  const countersignTimeoutMs = init.countersignTimeoutMs ?? 10_000
  const writeTimeoutMs = init.writeTimeoutMs ?? 30_000
  const tokenWindowMs = init.tokenWindowMs ?? 4
  const maxQueuedJobs = init.maxQueuedJobs ?? 8
  // Well inside the requester's admission timeout (10 s), so it hears "busy" and tries elsewhere.
  const queueTimeoutMs = init.queueTimeoutMs ?? 5_000
  const priority = { reservedCommonsShare: init.reservedCommonsShare }
  const running = new Map<string, AbortController>()
  /** Running jobs of floor-level requesters: they fill the reserved commons share first. */
  const runningFloor = new Set<string>()
  const waiting = new Map<string, Waiting>()
  const activityListeners = new Set<() => void>()
  const endListeners = new Set<(outcome: JobOutcome) => void>()
  const activity = () => {
    for (const listener of activityListeners) listener()
  }

  const standingOf = (requester: string): Standing =>
    components.standingOf?.(requester) ?? { member: requester, balance: 0, floorLeftToday: 0 }

  // Starts what the priority rules allow: called when a job arrives and when a slot frees.
  // Synchronous from pick to `running.set`, so two arrivals in one tick cannot share a slot.
  const pump = () => {
    if (waiting.size === 0) return
    const picked = pickAdmissions(
      [...waiting.values()].map((w) => w.request),
      { slots: maxConcurrentJobs, running: running.size, runningFloor: runningFloor.size },
      priority,
    )
    for (const request of picked) {
      const w = waiting.get(request.id)
      if (w === undefined) continue
      waiting.delete(request.id)
      clearTimeout(w.timer)
      running.set(request.id, new AbortController())
      if (isFloorLevel(request.standing)) runningFloor.add(request.id)
      w.settle(undefined)
    }
  }

  /** Frees a job's slot (once) and hands it on. */
  const release = (cid: string) => {
    runningFloor.delete(cid)
    if (!running.delete(cid)) return
    pump()
    activity()
  }

  /** Resolves when `cid` has a slot (undefined), or with the refusal when it cannot get one in time. */
  const waitForSlot = (cid: string, standing: Standing) =>
    new Promise<SubstrateError | undefined>((resolve) => {
      const request: QueuedRequest = { id: cid, standing, enqueuedAt: Date.now() }
      const timer = setTimeout(() => {
        if (!waiting.delete(cid)) return
        activity()
        resolve(
          new SubstrateError(
            'E_WORKER_BUSY',
            `waited ${queueTimeoutMs} ms in the queue; all ${maxConcurrentJobs} job slots stayed busy`,
          ),
        )
      }, queueTimeoutMs)
      waiting.set(cid, { request, timer, settle: resolve })
      pump()
      if (waiting.has(cid)) {
        log.info('job waits for a slot', { job: cid, member: standing.member, balance: standing.balance })
        activity() // the queue grew: the capacity record says so
      }
    })

  const refuse = async (ch: WorkerChannel, err: SubstrateError, reset: boolean) => {
    log.info('refused job', { code: err.code, error: err.message })
    await ch.write(errorFrame('refuse', err), 2_000).catch(() => {})
    // After a malformed or oversize frame the stream's remaining bytes mean nothing: reset.
    if (reset) ch.reset(err.code)
    else await ch.close()
  }

  const admit = async (ch: WorkerChannel, remote: string): Promise<AdmittedJob | undefined> => {
    let frame: RequesterFrame
    try {
      frame = await ch.read({ timeoutMs: manifestTimeoutMs })
    } catch (err) {
      await refuse(ch, toSubstrateError(err), true)
      return undefined
    }
    if (frame.t !== 'manifest') {
      await refuse(ch, new SubstrateError('E_PROTOCOL', `expected a manifest frame, got ${frame.t}`), true)
      return undefined
    }
    // Cheapest first: a worker with a full queue says so before spending a signature check.
    // The stream's peer is authenticated, so its standing is known already. A floor-level
    // requester is still let in while a slot is free: the reserved share may be free for it
    // while priority requests wait.
    const standing = standingOf(remote)
    const full = running.size >= maxConcurrentJobs || !isFloorLevel(standing)
    if (waiting.size >= maxQueuedJobs && full) {
      await refuse(
        ch,
        new SubstrateError(
          'E_WORKER_BUSY',
          `all ${maxConcurrentJobs} job slots are busy and ${waiting.size} jobs are waiting`,
        ),
        false,
      )
      return undefined
    }
    const refusal = components.refusal?.()
    if (refusal !== undefined) {
      await refuse(ch, refusal, false)
      return undefined
    }
    let job: AdmittedJob
    try {
      const envelope = verifyManifest(frame.manifest, remote, { replay })
      if (!components.hasModel(envelope.payload.model)) {
        throw new SubstrateError(
          'E_MODEL_NOT_FOUND',
          `this worker does not hold model ${envelope.payload.model}`,
        )
      }
      const cid = cidOf(frame.manifest)
      job = { cid, requester: remote, manifest: envelope.payload, envelope }
    } catch (err) {
      await refuse(ch, toSubstrateError(err), false)
      return undefined
    }
    // The queue has room (checked above, and nothing awaited since): wait for a slot.
    const refused = await waitForSlot(job.cid, standing)
    if (refused !== undefined) {
      await refuse(ch, refused, false)
      return undefined
    }
    return job
  }

  // Resolves with the requester's next frame. Any frame but a countersign, or the stream
  // failing, during generation means the requester is gone or gave up: cancel.
  const watchRequester = (ch: WorkerChannel, ac: AbortController, readAbort: AbortController) => {
    const next = ch.read({ signal: readAbort.signal })
    next.then(
      (frame) => {
        if (frame.t !== 'countersign') ac.abort(new RequesterLeft('E_CANCELLED', 'the requester cancelled'))
      },
      (err: unknown) => {
        const e = toSubstrateError(err)
        ac.abort(new RequesterLeft(e.code, e.message))
      },
    )
    return next
  }

  // Next event of the job, or the abort: a runtime that ignores its signal cannot hold the
  // stream (or the slot) past a cancel.
  const nextEvent = (it: AsyncIterator<RuntimeEvent>, signal: AbortSignal) =>
    new Promise<IteratorResult<RuntimeEvent>>((resolve, reject) => {
      if (signal.aborted) return reject(signal.reason)
      const onAbort = () => reject(signal.reason)
      signal.addEventListener('abort', onAbort, { once: true })
      it.next().then(
        (r) => {
          signal.removeEventListener('abort', onAbort)
          resolve(r)
        },
        (e: unknown) => {
          signal.removeEventListener('abort', onAbort)
          reject(e)
        },
      )
    })

  const generate = async (ch: WorkerChannel, job: AdmittedJob, signal: AbortSignal) => {
    const started = performance.now()
    const maxTokens = Math.min(
      job.manifest.maxTokens,
      job.manifest.options.maxTokens ?? Number.MAX_SAFE_INTEGER,
    )
    const capped: AdmittedJob = {
      ...job,
      manifest: { ...job.manifest, options: { ...job.manifest.options, maxTokens } },
    }
    let text = ''
    let stats: GenerationStats | undefined
    const tokens = createTokenBatcher(
      (chunk, n) => ch.write({ t: 'token', text: chunk, n }, writeTimeoutMs),
      {
        maxFrameChars: 8 * 1024,
        maxPendingChars: 64 * 1024,
        windowMs: tokenWindowMs,
      },
    )
    const it = components.runJob(capped, signal)[Symbol.asyncIterator]()
    try {
      for (let r = await nextEvent(it, signal); r.done !== true; r = await nextEvent(it, signal)) {
        const ev = r.value
        if (ev.type === 'token') {
          text += ev.text
          await tokens.push(ev.text, ev.tokens)
        } else {
          stats = ev.stats
        }
      }
      await tokens.flush()
    } finally {
      // Not awaited: a generator still inside next() finishes that first, then runs its finally.
      it.return?.().catch(() => {})
    }
    if (stats === undefined) throw new SubstrateError('E_INTERNAL', 'the runtime ended the job without stats')
    return { text, stats, computeMs: Math.round(performance.now() - started) }
  }

  const serve = async (ch: WorkerChannel, job: AdmittedJob): Promise<JobOutcome> => {
    const ac = running.get(job.cid) ?? new AbortController()
    const readAbort = new AbortController()
    activity()
    const next = watchRequester(ch, ac, readAbort)
    next.catch(() => {}) // observed by watchRequester; this only silences the duplicate
    try {
      await ch.write({ t: 'accept', job: job.cid }, writeTimeoutMs)
      const { text, stats, computeMs } = await generate(ch, job, ac.signal)
      const receipt = signReceipt(components.identity, {
        job: job.cid,
        requester: job.requester,
        model: job.manifest.model,
        outputHash: sha256Digest(text),
        promptTokens: stats.promptTokens,
        outputTokens: stats.outputTokens,
        computeMs,
      })
      release(job.cid) // the slot is free once generation ends, countersigned or not
      await ch.write({ t: 'done', stats, receipt }, writeTimeoutMs)
      const timer = setTimeout(() => readAbort.abort(), countersignTimeoutMs)
      try {
        const frame = await next
        if (frame.t !== 'countersign')
          throw new SubstrateError('E_PROTOCOL', `expected a countersign, got ${frame.t}`)
        const countersigned = verifyCountersignedReceipt(frame.receipt)
        if (countersigned.requester !== job.requester) {
          throw new SubstrateError('E_RECEIPT_INVALID', 'countersignature is not from the requester')
        }
        if (!Buffer.from(countersigned.workerReceipt).equals(receipt)) {
          throw new SubstrateError('E_RECEIPT_INVALID', 'the requester countersigned another receipt')
        }
        await ch.close()
        return { job, status: 'completed', stats, receipt: countersigned }
      } catch (err) {
        log.warn('job ran but was not countersigned', { job: job.cid, error: toSubstrateError(err).message })
        ch.reset('no countersignature')
        return { job, status: 'unconfirmed', stats, error: toSubstrateError(err) }
      } finally {
        clearTimeout(timer)
      }
    } catch (err) {
      const error = toSubstrateError(err)
      const requesterLeft =
        ac.signal.reason instanceof RequesterLeft ||
        error.code === 'E_PEER_GONE' ||
        error.code === 'E_PEER_TIMEOUT'
      // Cancellation the other way: the requester learns why its job stopped.
      if (!requesterLeft) await ch.write(errorFrame('error', error), 2_000).catch(() => {})
      ch.reset(error.code)
      return { job, status: requesterLeft || ac.signal.aborted ? 'cancelled' : 'failed', error }
    } finally {
      readAbort.abort()
      release(job.cid)
    }
  }

  const handle = async (stream: Stream, connection: Connection) => {
    const ch = frameChannel<RequesterFrame, WorkerFrame>(
      stream,
      requesterFrameSchema,
      MAX_REQUESTER_FRAME_BYTES,
    )
    const job = await admit(ch, connection.remotePeer.toString())
    if (job === undefined) return
    log.info('admitted job', { job: job.cid, requester: job.requester, model: job.manifest.model })
    const outcome = await serve(ch, job)
    log.info('job ended', { job: job.cid, status: outcome.status, code: outcome.error?.code })
    for (const listener of endListeners) listener(outcome)
  }

  return {
    async start() {
      await libp2p.handle(
        JOB_PROTOCOL,
        (stream, connection) => {
          handle(stream, connection).catch((err: unknown) => {
            log.error('job stream failed', { error: toSubstrateError(err).message })
            stream.abort(toSubstrateError(err))
          })
        },
        // Room beyond the job slots and the queue so a busy worker can still answer "busy". A
        // requester may reach us only through a relay (we are behind a NAT): jobs run on such
        // a limited connection too, within the relay's duration and data limits.
        { maxInboundStreams: maxConcurrentJobs + maxQueuedJobs + 32, runOnLimitedConnection: true },
      )
    },
    async stop() {
      await libp2p.unhandle(JOB_PROTOCOL)
      for (const [cid, w] of waiting) {
        waiting.delete(cid)
        clearTimeout(w.timer)
        w.settle(new SubstrateError('E_CANCELLED', 'the worker is stopping'))
      }
      for (const ac of running.values()) ac.abort(new SubstrateError('E_CANCELLED', 'the worker is stopping'))
    },
    activeJobs: () => running.size,
    queuedJobs: () => waiting.size,
    onActivity(listener) {
      activityListeners.add(listener)
      return () => activityListeners.delete(listener)
    },
    onJobEnd(listener) {
      endListeners.add(listener)
      return () => endListeners.delete(listener)
    },
  }
}
