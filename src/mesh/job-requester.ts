// The requester side of `/substrate/job/1`: sign a manifest, open a stream to a chosen
// worker, pass its tokens through as they arrive, then check its receipt and countersign it.
// The stream of events has the shape of Runtime.generate() plus the receipt, so the API can
// serve a mesh job exactly like a local one. Leaving the loop early (or aborting the signal)
// resets the stream, which is how the worker learns to stop generating.

import { peerIdFromString } from '@libp2p/peer-id'
import { isErrorCode, SubstrateError, toSubstrateError } from '../errors.ts'
import { cidOf } from '../identity/envelope.ts'
import type { Identity } from '../identity/keys.ts'
import type { Logger } from '../logger.ts'
import type { ChatMessage, GenerationStats, SamplingOptions } from '../runtime/protocol.ts'
import {
  errorFrame,
  frameChannel,
  JOB_PROTOCOL,
  MAX_WORKER_FRAME_BYTES,
  type RequesterFrame,
  type WorkerFrame,
  workerFrameSchema,
} from './job-codec.ts'
import {
  type CountersignedReceipt,
  countersignReceipt,
  signManifest,
  verifyWorkerReceipt,
} from './job-records.ts'
import type { MeshNode } from './libp2p-node.ts'

export interface JobRequest {
  /** The model's digest ("sha256:<hex>"): the worker must hold exactly these weights. */
  model: string
  mode: 'completion' | 'chat'
  prompt?: string
  messages?: ChatMessage[]
  options?: SamplingOptions
  maxTokens: number
  /** Lifetime of the signed manifest; defaults to the job record type's. */
  ttlMs?: number
}

export interface JobRequestOptions {
  signal?: AbortSignal
}

export type MeshJobEvent =
  /** tokens: how many tokens the text holds, when the worker says. */
  | { type: 'token'; text: string; tokens?: number }
  | {
      type: 'done'
      stats: GenerationStats
      loadMs: number
      totalMs: number
      worker: string
      job: string
      receipt: CountersignedReceipt
      /** Set when this worker continued after another failed mid-stream: tokens it took over. */
      resumedAfterTokens?: number
    }

export interface MeshJobResult {
  text: string
  stats: GenerationStats
  worker: string
  job: string
  receipt: CountersignedReceipt
  totalMs: number
  /** ms from dialling to the first token (undefined when no token came). */
  firstTokenMs: number | undefined
}

export interface JobRequesterInit {
  dialTimeoutMs?: number
  /** How long a worker may take to admit or refuse a manifest. */
  admissionTimeoutMs?: number
  /** How long an admitted job may take to its first frame: covers the worker loading the model. */
  firstTokenTimeoutMs?: number
  /** Longest silence between two frames after the first before the worker counts as stalled. */
  stallTimeoutMs?: number
}

/** A job this node asked for and countersigned, as it saw it: what a spot check needs. */
export interface CountersignedJob {
  receipt: CountersignedReceipt
  /** The exact manifest envelope bytes the worker admitted (CID = the receipt's job). */
  manifest: Uint8Array
  /** The output text this worker sent (not what earlier workers of a failover sent). */
  output: string
}

export interface JobRequester {
  /** Called after each receipt this node countersigned. */
  onCountersigned(listener: (job: CountersignedJob) => void): () => void
  stream(worker: string, request: JobRequest, options?: JobRequestOptions): AsyncGenerator<MeshJobEvent>
  run(worker: string, request: JobRequest, options?: JobRequestOptions): Promise<MeshJobResult>
}

/** Generous bound on one token's text; tokenizers' longest tokens are far shorter. */
const MAX_CHARS_PER_TOKEN = 256

// A worker's error is only passed on under its own code if that code is one we know.
function remoteError(worker: string, frame: { code: string; message: string }, verb: string) {
  const code = isErrorCode(frame.code) ? frame.code : 'E_PROTOCOL'
  return new SubstrateError(code, `worker ${worker} ${verb} the job: ${frame.message}`)
}

export function createJobRequester(
  components: { mesh: MeshNode; identity: Identity; logger: Logger },
  init: JobRequesterInit = {},
): JobRequester {
  const log = components.logger.child('job-requester')
  const libp2p = components.mesh.libp2p
  const dialTimeoutMs = init.dialTimeoutMs ?? 10_000
  const admissionTimeoutMs = init.admissionTimeoutMs ?? 10_000
  const stallTimeoutMs = init.stallTimeoutMs ?? 30_000
  const firstTokenTimeoutMs = Math.max(init.firstTokenTimeoutMs ?? 60_000, stallTimeoutMs)
  const countersignedListeners = new Set<(job: CountersignedJob) => void>()

  async function* stream(
    worker: string,
    request: JobRequest,
    options: JobRequestOptions = {},
  ): AsyncGenerator<MeshJobEvent> {
    const started = performance.now()
    const { signal } = options
    const { model, mode, prompt, messages, maxTokens } = request
    // A runaway or hostile worker cannot stream forever: no real token is this long.
    const maxOutputChars = maxTokens * MAX_CHARS_PER_TOKEN
    const signed = signManifest(
      components.identity,
      { kind: 'infer', model, mode, prompt, messages, options: request.options ?? {}, maxTokens },
      { ttlMs: request.ttlMs },
    )
    let workerPeer: ReturnType<typeof peerIdFromString>
    try {
      workerPeer = peerIdFromString(worker)
    } catch (cause) {
      throw new SubstrateError('E_INVALID_ARGUMENT', `not a peer id: ${worker.slice(0, 64)}`, { cause })
    }
    const dialSignal = AbortSignal.any([AbortSignal.timeout(dialTimeoutMs), ...(signal ? [signal] : [])])
    let raw: Awaited<ReturnType<typeof libp2p.dialProtocol>>
    try {
      // negotiateFully: false sends the protocol name together with the manifest, saving a
      // round trip per job; a worker without the protocol then fails the first read instead.
      raw = await libp2p.dialProtocol(workerPeer, JOB_PROTOCOL, {
        signal: dialSignal,
        negotiateFully: false,
        // A worker behind a NAT is reachable only through a relay (a limited connection).
        runOnLimitedConnection: true,
      })
    } catch (cause) {
      if (signal?.aborted === true) throw new SubstrateError('E_CANCELLED', 'job cancelled', { cause })
      throw new SubstrateError('E_PEER_GONE', `cannot open a job stream to ${worker}: ${String(cause)}`, {
        cause,
      })
    }
    const ch = frameChannel<WorkerFrame, RequesterFrame>(raw, workerFrameSchema, MAX_WORKER_FRAME_BYTES)
    let finished = false
    try {
      await ch.write({ t: 'manifest', manifest: signed.bytes })
      const first = await ch.read({ timeoutMs: admissionTimeoutMs, signal })
      if (first.t === 'refuse' || first.t === 'error') throw remoteError(worker, first, 'refused')
      if (first.t !== 'accept' || first.job !== signed.cid) {
        throw new SubstrateError('E_PROTOCOL', `worker ${worker} answered the manifest with ${first.t}`)
      }
      let text = ''
      for (let frames = 0; ; frames++) {
        const frame = await ch.read({
          timeoutMs: frames === 0 ? firstTokenTimeoutMs : stallTimeoutMs,
          signal,
        })
        if (frame.t === 'token') {
          text += frame.text
          if (text.length > maxOutputChars) {
            throw new SubstrateError(
              'E_PROTOCOL',
              `worker ${worker} sent more output than ${maxTokens} tokens can hold`,
            )
          }
          yield frame.n === undefined
            ? { type: 'token', text: frame.text }
            : { type: 'token', text: frame.text, tokens: frame.n }
        } else if (frame.t === 'done') {
          const workerReceipt = verifyWorkerReceipt(frame.receipt, {
            worker,
            requester: components.identity.id,
            job: signed.cid,
            model,
            output: text,
            maxTokens,
          })
          const countersigned = countersignReceipt(components.identity, frame.receipt)
          await ch.write({ t: 'countersign', receipt: countersigned })
          finished = true
          await ch.close()
          // Both signatures were just checked (the worker's) and made (ours): no need to re-verify.
          const receipt: CountersignedReceipt = {
            bytes: countersigned,
            cid: cidOf(countersigned),
            worker,
            requester: components.identity.id,
            receipt: workerReceipt.payload,
            workerReceipt: frame.receipt,
          }
          for (const listener of countersignedListeners)
            listener({ receipt, manifest: signed.bytes, output: text })
          const totalMs = performance.now() - started
          yield { type: 'done', stats: frame.stats, loadMs: 0, totalMs, worker, job: signed.cid, receipt }
          return
        } else if (frame.t === 'error' || frame.t === 'refuse') {
          throw remoteError(worker, frame, 'failed')
        } else {
          throw new SubstrateError('E_PROTOCOL', `unexpected ${frame.t} frame from worker ${worker}`)
        }
      }
    } catch (err) {
      const error = toSubstrateError(err)
      // Tell a misbehaving worker why we hang up; a vanished or stalled one would not hear it.
      if (
        error.code === 'E_PROTOCOL' ||
        error.code === 'E_RECEIPT_INVALID' ||
        error.code === 'E_RECORD_TOO_LARGE'
      ) {
        await ch.write(errorFrame('error', error), 1_000).catch(() => {})
      }
      log.debug('mesh job failed', { worker, job: signed.cid, code: error.code })
      throw error
    } finally {
      if (!finished) ch.reset('requester stopped')
    }
  }

  return {
    onCountersigned(listener) {
      countersignedListeners.add(listener)
      return () => countersignedListeners.delete(listener)
    },
    stream,
    async run(worker, request, options) {
      const started = performance.now()
      let text = ''
      let firstTokenMs: number | undefined
      for await (const ev of stream(worker, request, options)) {
        if (ev.type === 'token') {
          firstTokenMs ??= performance.now() - started
          text += ev.text
        } else {
          const { stats, job, receipt, totalMs } = ev
          return { text, stats, worker, job, receipt, totalMs, firstTokenMs }
        }
      }
      throw new SubstrateError('E_INTERNAL', 'mesh job stream ended without a result')
    },
  }
}
