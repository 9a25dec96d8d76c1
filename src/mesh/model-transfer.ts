// `/substrate/model-chunks/2`: how a node hands a model it holds to a peer, chunk by chunk.
// Framed like the job protocol (varint length + DAG-CBOR, bounded and timed reads,
// job-codec.ts), except the chunk bytes themselves: they follow their header as raw frames
// of at most DATA_FRAME_BYTES, neither encoded nor decoded (v1 wrapped every 256 KiB in a
// DAG-CBOR map, which cost more CPU than the rest of the protocol):
//
//   requester                                   holder
//     manifest {digest}                 ──▶     held and allowed?
//                                       ◀──     manifest {manifest: DAG-CBOR bytes} | error
//     chunk {digest, index}             ──▶
//                                       ◀──     chunk {index, size}, raw bytes … (size in all) | error
//
// The holder never decides what is true: the requester checks the manifest's shape and
// digest here, each chunk against the manifest (peer-pull.ts), and the file at the end.

import { open } from 'node:fs/promises'
import { peerIdFromString } from '@libp2p/peer-id'
import { z } from 'zod'
import { SubstrateError, toSubstrateError } from '../errors.ts'
import type { Logger } from '../logger.ts'
import {
  type ChunkManifest,
  chunkRange,
  decodeManifest,
  MAX_MANIFEST_BYTES,
  manifestCid,
  readFully,
} from '../models/chunk-manifest.ts'
import type { ModelBlobs } from '../models/types.ts'
import { KiB } from '../protocol/limits.ts'
import { errorFrame, type FrameChannel, frameChannel } from './job-codec.ts'
import type { MeshNode } from './libp2p-node.ts'

export const MODEL_CHUNKS_PROTOCOL = '/substrate/model-chunks/2'

/** Raw data frames carry at most this much; small enough to pace, large enough that framing costs nothing. */
export const DATA_FRAME_BYTES = 256 * KiB
const MAX_REQUEST_FRAME_BYTES = 1 * KiB
const MAX_RESPONSE_FRAME_BYTES = Math.max(MAX_MANIFEST_BYTES, DATA_FRAME_BYTES) + 1 * KiB

const digestSchema = z.string().regex(/^sha256:[0-9a-f]{64}$/)
const bytesSchema = z.custom<Uint8Array>((v) => v instanceof Uint8Array, 'expected bytes')
const errorFields = { code: z.string().max(64), message: z.string().max(1024) }

const requestSchema = z.discriminatedUnion('t', [
  z.strictObject({ t: z.literal('manifest'), digest: digestSchema }),
  z.strictObject({ t: z.literal('chunk'), digest: digestSchema, index: z.number().int().min(0) }),
])
type Request = z.infer<typeof requestSchema>

const responseSchema = z.discriminatedUnion('t', [
  z.strictObject({ t: z.literal('manifest'), manifest: bytesSchema }),
  z.strictObject({ t: z.literal('chunk'), index: z.number().int().min(0), size: z.number().int().min(0) }),
  z.strictObject({ t: z.literal('error'), ...errorFields }),
])
type Response = z.infer<typeof responseSchema>

/** Where a holder's manifests and chunk bytes come from; tests give hostile ones. */
export interface ChunkSource {
  /** The encoded manifest of a model this node holds and may share, or undefined. */
  manifest(digest: string): Promise<Uint8Array | undefined>
  /** The bytes of chunk `index`, exactly its length. */
  readChunk(manifest: ChunkManifest, index: number): Promise<Uint8Array>
}

/** Serves what the model store holds, minus what `allowed` forbids (policy). */
export function storeChunkSource(
  store: Pick<ModelBlobs, 'manifest' | 'blobPath'>,
  allowed: (digest: string) => boolean = () => true,
): ChunkSource {
  return {
    async manifest(digest) {
      if (!allowed(digest) || store.blobPath(digest) === undefined) return undefined
      return (await store.manifest(digest))?.bytes
    },
    async readChunk(manifest, index) {
      const path = store.blobPath(manifest.digest)
      if (path === undefined || !allowed(manifest.digest)) {
        throw new SubstrateError('E_MODEL_NOT_FOUND', `model ${manifest.digest} is no longer held here`)
      }
      const { start, end } = chunkRange(manifest, index)
      const buffer = Buffer.allocUnsafe(end - start)
      const file = await open(path, 'r')
      try {
        await readFully(file, buffer, end - start, start)
      } finally {
        await file.close()
      }
      return buffer
    },
  }
}

export interface ModelTransferInit {
  /** Concurrent chunk uploads; one more is refused with E_WORKER_BUSY. */
  maxConcurrentUploads?: number
  /** Upload cap for all peers together, bytes per second; unlimited when absent. */
  uploadBytesPerSecond?: number
  /** How long a requester may take to send its request. */
  requestTimeoutMs?: number
}

export interface FetchOptions {
  /** The longest silence tolerated between two frames: a stalled peer fails with E_PEER_TIMEOUT. */
  stallTimeoutMs?: number
  signal?: AbortSignal
}

export interface SessionOptions extends FetchOptions {
  /** Chunk requests the caller keeps in flight; the receive buffer holds that many answers. */
  pipelineDepth?: number
}

export interface FetchedManifest {
  manifest: ChunkManifest
  bytes: Uint8Array
  cid: string
}

/**
 * One stream to one holder carrying many chunk requests. Requests are pipelined: `fetch`
 * sends its request at once and its answer comes after the answers to earlier ones, so the
 * link never idles between chunks, and at most one chunk per holder is half-received when
 * the process dies.
 */
export interface ChunkSession {
  /** Chunk `index` as the peer sent it (length checked, hash not: the caller verifies). */
  fetch(index: number): Promise<Uint8Array>
  /** Resets the stream; pending fetches fail. */
  close(): void
}

export interface ModelTransfer {
  start(): Promise<void>
  stop(): Promise<void>
  /** Uploads in progress. */
  activeUploads(): number
  fetchManifest(peer: string, digest: string, options?: FetchOptions): Promise<FetchedManifest>
  openSession(peer: string, manifest: ChunkManifest, options?: SessionOptions): Promise<ChunkSession>
}

export function createModelTransfer(
  components: { mesh: MeshNode; logger: Logger; source: ChunkSource },
  init: ModelTransferInit = {},
): ModelTransfer {
  const log = components.logger.child('model-transfer')
  const libp2p = components.mesh.libp2p
  const maxUploads = init.maxConcurrentUploads ?? 16
  const pace = init.uploadBytesPerSecond === undefined ? undefined : createPacer(init.uploadBytesPerSecond)
  let uploads = 0
  // Decoded manifests of recently served models: decoding one per chunk request would cost
  // more than the request for a model with many chunks.
  const decoded = new Map<string, ChunkManifest>()
  const manifestFor = async (digest: string): Promise<ChunkManifest | undefined> => {
    // Re-checked per request: a model removed (or denied) mid-transfer stops being served.
    const bytes = await components.source.manifest(digest)
    if (bytes === undefined) {
      decoded.delete(digest)
      return undefined
    }
    const cached = decoded.get(digest)
    if (cached !== undefined) return cached
    const m = decodeManifest(bytes, digest)
    if (decoded.size >= 8) decoded.delete(decoded.keys().next().value!)
    decoded.set(digest, m)
    return m
  }

  async function serve(ch: FrameChannel<Request, Response>, request: Request): Promise<void> {
    if (request.t === 'manifest') {
      const bytes = await components.source.manifest(request.digest)
      if (bytes === undefined) throw notHeld(request.digest)
      await ch.write({ t: 'manifest', manifest: bytes })
      return
    }
    const manifest = await manifestFor(request.digest)
    if (manifest === undefined) throw notHeld(request.digest)
    if (request.index >= manifest.chunks.length) {
      throw new SubstrateError(
        'E_BAD_REQUEST',
        `chunk ${request.index} is past the end (${manifest.chunks.length})`,
      )
    }
    const data = await components.source.readChunk(manifest, request.index)
    await ch.write({ t: 'chunk', index: request.index, size: data.length })
    for (let at = 0; at < data.length; at += DATA_FRAME_BYTES) {
      const bytes = data.subarray(at, Math.min(data.length, at + DATA_FRAME_BYTES))
      if (pace !== undefined) await pace(bytes.length)
      await ch.writeRaw(bytes)
    }
  }

  /** Answers requests on one stream in order until the requester closes it or goes quiet. */
  async function handle(ch: FrameChannel<Request, Response>, peer: string): Promise<void> {
    for (;;) {
      let request: Request
      try {
        request = await ch.read({ timeoutMs: init.requestTimeoutMs ?? 30_000 })
      } catch (err) {
        // The requester closing its side after its last request is the normal end.
        if (toSubstrateError(err).code === 'E_PEER_GONE') return ch.close()
        throw err
      }
      if (uploads >= maxUploads) {
        await ch.write(errorFrame('error', new SubstrateError('E_WORKER_BUSY', 'too many uploads right now')))
        return ch.close()
      }
      uploads++
      try {
        await serve(ch, request)
      } catch (err) {
        const error = toSubstrateError(err)
        log.debug('chunk request failed', { peer, code: error.code, error: error.message })
        await ch.write(errorFrame('error', error), 5_000).catch(() => {})
        return ch.close()
      } finally {
        uploads--
      }
    }
  }

  async function openChannel(peer: string, options: FetchOptions, maxBufferBytes: number) {
    let id: ReturnType<typeof peerIdFromString>
    try {
      id = peerIdFromString(peer)
    } catch (cause) {
      throw new SubstrateError('E_INVALID_ARGUMENT', `not a peer id: ${peer.slice(0, 64)}`, { cause })
    }
    const stallMs = options.stallTimeoutMs ?? 15_000
    const dialSignal = AbortSignal.any([
      AbortSignal.timeout(stallMs),
      ...(options.signal ? [options.signal] : []),
    ])
    let stream: Awaited<ReturnType<typeof libp2p.dialProtocol>>
    try {
      stream = await libp2p.dialProtocol(id, MODEL_CHUNKS_PROTOCOL, {
        signal: dialSignal,
        negotiateFully: false,
      })
    } catch (cause) {
      if (options.signal?.aborted === true)
        throw new SubstrateError('E_CANCELLED', 'pull cancelled', { cause })
      throw new SubstrateError('E_PEER_GONE', `cannot open a chunk stream to ${peer}: ${String(cause)}`, {
        cause,
      })
    }
    return frameChannel<Response, Request>(stream, responseSchema, MAX_RESPONSE_FRAME_BYTES, {
      maxBufferBytes,
    })
  }

  const readOptions = (options: FetchOptions) => ({
    timeoutMs: options.stallTimeoutMs ?? 15_000,
    ...(options.signal ? { signal: options.signal } : {}),
  })
  const readFrame = async (ch: FrameChannel<Response, Request>, peer: string, options: FetchOptions) => {
    const frame = await ch.read(readOptions(options))
    if (frame.t === 'error')
      throw new SubstrateError(remoteCode(frame.code), `peer ${peer}: ${frame.message}`)
    return frame
  }

  return {
    async start() {
      await libp2p.handle(
        MODEL_CHUNKS_PROTOCOL,
        (stream, connection) => {
          const ch = frameChannel<Request, Response>(stream, requestSchema, MAX_REQUEST_FRAME_BYTES)
          handle(ch, connection.remotePeer.toString()).catch((err: unknown) => {
            log.debug('chunk stream failed', { error: toSubstrateError(err).message })
            ch.reset('chunk stream failed')
          })
        },
        { maxInboundStreams: maxUploads + 16 },
      )
    },
    async stop() {
      await libp2p.unhandle(MODEL_CHUNKS_PROTOCOL)
    },
    activeUploads: () => uploads,
    async fetchManifest(peer, digest, options = {}) {
      const ch = await openChannel(peer, options, MAX_RESPONSE_FRAME_BYTES + 64 * KiB)
      try {
        await ch.write({ t: 'manifest', digest }, options.stallTimeoutMs ?? 15_000)
        const frame = await readFrame(ch, peer, options)
        if (frame.t !== 'manifest') {
          throw new SubstrateError('E_PROTOCOL', `peer ${peer} answered a manifest request with ${frame.t}`)
        }
        const manifest = decodeManifest(frame.manifest, digest)
        return { manifest, bytes: frame.manifest, cid: await manifestCid(frame.manifest) }
      } finally {
        ch.reset('done')
      }
    },
    async openSession(peer, manifest, options = {}) {
      // Up to `depth` answers may be on the wire at once: room for all of them.
      const depth = options.pipelineDepth ?? 2
      const ch = await openChannel(peer, options, depth * manifest.chunkSize + MAX_RESPONSE_FRAME_BYTES)
      let tail: Promise<unknown> = Promise.resolve()
      let failed: SubstrateError | undefined
      const receive = async (index: number): Promise<Uint8Array> => {
        if (failed !== undefined) throw failed
        const { start, end } = chunkRange(manifest, index)
        try {
          const header = await readFrame(ch, peer, options)
          if (header.t !== 'chunk' || header.index !== index || header.size !== end - start) {
            throw new SubstrateError('E_PROTOCOL', `peer ${peer} answered chunk ${index} with a wrong header`)
          }
          // Every byte is overwritten below before anyone reads it.
          const data = Buffer.allocUnsafe(end - start)
          let have = 0
          while (have < data.length) {
            const frame = await ch.readRaw(readOptions(options))
            if (frame.byteLength === 0 || have + frame.byteLength > data.length) {
              throw new SubstrateError('E_PROTOCOL', `peer ${peer} sent more or other than chunk ${index}`)
            }
            for (const piece of frame) {
              data.set(piece, have)
              have += piece.length
            }
          }
          return data
        } catch (err) {
          // Answers come in order: once one is lost, every later one on this stream is too.
          failed ??= toSubstrateError(err)
          ch.reset('chunk session failed')
          throw failed
        }
      }
      return {
        fetch(index) {
          if (failed !== undefined) return Promise.reject(failed)
          const sent = ch.write(
            { t: 'chunk', digest: manifest.digest, index },
            options.stallTimeoutMs ?? 15_000,
          )
          const answer = Promise.all([sent, tail]).then(() => receive(index))
          tail = answer.catch(() => {})
          return answer
        },
        close() {
          failed ??= new SubstrateError('E_CANCELLED', 'chunk session closed')
          ch.reset('chunk session closed')
        },
      }
    },
  }
}

const notHeld = (digest: string) =>
  new SubstrateError('E_MODEL_NOT_FOUND', `model ${digest} is not held or not shared here`)

const REMOTE_CODES = new Set(['E_MODEL_NOT_FOUND', 'E_WORKER_BUSY', 'E_BAD_REQUEST'])
/** A peer's error code is only believed for the few a holder may legitimately send. */
function remoteCode(code: string): 'E_MODEL_NOT_FOUND' | 'E_WORKER_BUSY' | 'E_BAD_REQUEST' | 'E_PROTOCOL' {
  return REMOTE_CODES.has(code)
    ? (code as 'E_MODEL_NOT_FOUND' | 'E_WORKER_BUSY' | 'E_BAD_REQUEST')
    : 'E_PROTOCOL'
}

/**
 * A token bucket shared by every upload: each call waits until `bytes` may go out. The
 * bucket holds at most a quarter second of credit, so a burst after idling stays short.
 */
export function createPacer(bytesPerSecond: number): (bytes: number) => Promise<void> {
  let credit = 0
  let at = performance.now()
  let queue: Promise<void> = Promise.resolve()
  return (bytes) => {
    const turn = queue.then(async () => {
      const now = performance.now()
      credit = Math.min(bytesPerSecond / 4, credit + ((now - at) / 1000) * bytesPerSecond)
      at = now
      credit -= bytes
      if (credit < 0) await new Promise((r) => setTimeout(r, (-credit / bytesPerSecond) * 1000))
    })
    queue = turn
    return turn
  }
}
