// Frames of `/substrate/job/1`: one stream per job, varint-length-prefixed DAG-CBOR maps
// tagged by `t`. Every read is bounded twice: by a hard frame size (checked from the length
// prefix, before the body is buffered) and by a deadline, so a hostile or stalled peer can
// cost neither memory nor a hung request. Every failure surfaces as a SubstrateError.

import * as dagCbor from '@ipld/dag-cbor'
import type { Stream } from '@libp2p/interface'
import { type LengthPrefixedStream, lpStream } from '@libp2p/utils'
import { z } from 'zod'
import { SubstrateError } from '../errors.ts'
import { recordTypes } from '../protocol/domains.ts'
import { KiB } from '../protocol/limits.ts'
import { generationStatsSchema } from '../runtime/protocol.ts'

export const JOB_PROTOCOL = '/substrate/job/1'

/** The manifest frame is the largest: a whole job envelope plus the frame's own fields. */
export const MAX_REQUESTER_FRAME_BYTES = recordTypes.job.maxBytes + 1 * KiB
/** Tokens, a receipt (≤ 8 KiB) and short messages: nothing a worker sends needs more. */
export const MAX_WORKER_FRAME_BYTES = 64 * KiB

const errorFields = { code: z.string().max(64), message: z.string().max(1024) }
// DAG-CBOR decodes byte strings to Uint8Array (of any backing buffer).
const bytesSchema = z.custom<Uint8Array>((v) => v instanceof Uint8Array, 'expected bytes')

export const requesterFrameSchema = z.discriminatedUnion('t', [
  z.strictObject({ t: z.literal('manifest'), manifest: bytesSchema }),
  z.strictObject({ t: z.literal('cancel') }),
  z.strictObject({ t: z.literal('countersign'), receipt: bytesSchema }),
  z.strictObject({ t: z.literal('error'), ...errorFields }),
])
export type RequesterFrame = z.infer<typeof requesterFrameSchema>

export const workerFrameSchema = z.discriminatedUnion('t', [
  z.strictObject({ t: z.literal('accept'), job: z.string().max(128) }),
  z.strictObject({ t: z.literal('refuse'), ...errorFields }),
  // n: how many tokens the text holds (optional, from older workers absent), so a requester
  // that fails over mid-stream knows how many tokens it already has.
  z.strictObject({
    t: z.literal('token'),
    text: z.string().max(16 * KiB),
    n: z
      .number()
      .int()
      .min(0)
      .max(16 * KiB)
      .optional(),
  }),
  z.strictObject({ t: z.literal('done'), stats: generationStatsSchema, receipt: bytesSchema }),
  z.strictObject({ t: z.literal('error'), ...errorFields }),
])
export type WorkerFrame = z.infer<typeof workerFrameSchema>

/** A frame read as it came: its pieces are views of the received buffers. */
export type RawFrame = Awaited<ReturnType<LengthPrefixedStream['read']>>

export interface FrameChannel<In, Out> {
  readonly stream: Stream
  /** The next frame; rejects with E_PEER_TIMEOUT, E_PEER_GONE, E_PROTOCOL, E_RECORD_TOO_LARGE or E_CANCELLED. */
  read(options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<In>
  /** Rejects with E_PEER_TIMEOUT when the peer stops reading for `timeoutMs`. */
  write(frame: Out, timeoutMs?: number): Promise<void>
  /**
   * The next frame's bytes as they are, not decoded (bulk data that a decoded frame announced);
   * bounded and timed like `read`. The pieces are views of the received buffers: no copy.
   */
  readRaw(options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<RawFrame>
  /** Writes `bytes` as one frame without encoding them; timed like `write`. */
  writeRaw(bytes: Uint8Array, timeoutMs?: number): Promise<void>
  /** Graceful end: flushes and half-closes; resets instead if the peer does not cooperate in time. */
  close(timeoutMs?: number): Promise<void>
  /** Immediate end: the peer sees a reset. */
  reset(reason: string): void
  /** Bytes of the frames read and written so far, length prefixes included. */
  readonly bytesRead: number
  readonly bytesWritten: number
}

/** How a channel names its frames in errors: `job` for `/substrate/job/1`. */
export interface FrameChannelOptions {
  label?: string
  /** Unread bytes buffered before the stream is reset (lpStream's default: 4 MiB). */
  maxBufferBytes?: number
}

const ERRORS_TOO_LARGE = new Set(['InvalidDataLengthError', 'InvalidDataLengthLengthError'])

export function frameChannel<In, Out>(
  stream: Stream,
  schema: z.ZodType<In>,
  maxFrameBytes: number,
  options: FrameChannelOptions = {},
): FrameChannel<In, Out> {
  const lp = lpStream(stream, {
    maxDataLength: maxFrameBytes,
    ...(options.maxBufferBytes === undefined ? {} : { maxBufferSize: options.maxBufferBytes }),
  })
  const peer = () => stream.id
  const label = options.label ?? 'job'
  let bytesRead = 0
  let bytesWritten = 0

  const classify = (err: unknown, deadline: AbortSignal, signal?: AbortSignal): SubstrateError => {
    if (err instanceof SubstrateError) return err
    if (signal?.aborted === true)
      return new SubstrateError('E_CANCELLED', `${label} cancelled`, { cause: err })
    if (deadline.aborted) {
      return new SubstrateError('E_PEER_TIMEOUT', 'the peer sent nothing in time; it may be stalled', {
        cause: err,
      })
    }
    const name = err instanceof Error ? err.name : ''
    if (ERRORS_TOO_LARGE.has(name)) {
      return new SubstrateError('E_RECORD_TOO_LARGE', `a ${label} frame exceeds ${maxFrameBytes} bytes`, {
        cause: err,
      })
    }
    if (name === 'InvalidMessageLengthError') {
      return new SubstrateError('E_PROTOCOL', 'malformed frame length', { cause: err })
    }
    const detail = err instanceof Error ? err.message : String(err)
    return new SubstrateError('E_PEER_GONE', `the peer closed the ${label} stream (${detail})`, {
      cause: err,
    })
  }

  const readFrame = async (options: { timeoutMs?: number; signal?: AbortSignal }) => {
    const deadline = AbortSignal.timeout(options.timeoutMs ?? 2_147_483_647)
    const signal = options.signal === undefined ? deadline : AbortSignal.any([deadline, options.signal])
    let list: RawFrame
    try {
      list = await lp.read({ signal })
    } catch (err) {
      throw classify(err, deadline, options.signal)
    }
    bytesRead += varintLength(list.byteLength) + list.byteLength
    return list
  }
  const writeFrame = async (bytes: Uint8Array, timeoutMs: number) => {
    const deadline = AbortSignal.timeout(timeoutMs)
    try {
      await lp.write(bytes, { signal: deadline })
      bytesWritten += varintLength(bytes.length) + bytes.length
    } catch (err) {
      throw classify(err, deadline)
    }
  }

  return {
    stream,
    async read(options = {}) {
      const bytes = (await readFrame(options)).subarray()
      let decoded: unknown
      try {
        decoded = dagCbor.decode(bytes)
      } catch (cause) {
        throw new SubstrateError('E_PROTOCOL', `${label} frame on stream ${peer()} is not DAG-CBOR`, {
          cause,
        })
      }
      const parsed = schema.safeParse(decoded)
      if (!parsed.success) {
        const issue = parsed.error.issues[0]
        throw new SubstrateError(
          'E_PROTOCOL',
          `malformed ${label} frame: ${issue?.path.join('.')} ${issue?.message}`,
        )
      }
      return parsed.data
    },
    write: (frame, timeoutMs = 30_000) => writeFrame(dagCbor.encode(frame), timeoutMs),
    readRaw: (options = {}) => readFrame(options),
    writeRaw: (bytes, timeoutMs = 30_000) => writeFrame(bytes, timeoutMs),
    async close(timeoutMs = 5_000) {
      try {
        await stream.close({ signal: AbortSignal.timeout(timeoutMs) })
      } catch {
        stream.abort(new Error('close timed out'))
      }
    },
    reset(reason) {
      stream.abort(new Error(reason))
    },
    get bytesRead() {
      return bytesRead
    },
    get bytesWritten() {
      return bytesWritten
    },
  }
}

/** Bytes of the unsigned varint that prefixes a frame of `n` bytes. */
function varintLength(n: number): number {
  let bytes = 1
  while (n >= 0x80) {
    n = Math.floor(n / 0x80)
    bytes++
  }
  return bytes
}

/** The frame that carries a typed error to the other side. */
export const errorFrame = <T extends 'refuse' | 'error'>(t: T, err: SubstrateError) => ({
  t,
  code: err.code as string,
  message: err.message.slice(0, 1024),
})
