// Where a download's body goes: the socket reads straight into large buffers (see
// http-get.ts), each full buffer is hashed in order and written at its place in the file
// while the next one fills. Memory stays at a few buffers: reading pauses while MAX_BUSY
// of them are still being hashed or written.

import { toSubstrateError } from '../errors.ts'
import type { BodySink } from './http-get.ts'
import { allocAligned, DIRECT_ALIGN, type WritableFile } from './writable.ts'

/** Hashes the bytes it is given, in the order given; `data` is not reused before the promise settles. */
export interface OrderedHasher {
  update(data: Uint8Array): Promise<void> | undefined
}

/** One buffer: a socket read fills what is left of it, and it is written as one `write`. */
const SLOT = 4 << 20
/** Buffers being hashed or written before reading pauses. */
const MAX_BUSY = 3
/** Written bytes after which a flush to disk starts in the background (see createBodyWriter). */
const FLUSH_EVERY = 64 << 20

export interface BodyWriter extends BodySink {
  /** Resolves once every byte filled is hashed and written; rejects with the first failure. */
  drain(): Promise<void>
}

/**
 * A sink writing at `position` onwards. Every FLUSH_EVERY bytes an fsync starts in the
 * background: the final fsync (the caller's, the one that counts) then has only the tail
 * to write instead of the whole file.
 */
export function createBodyWriter(out: WritableFile, position: number, hasher: OrderedHasher): BodyWriter {
  const free: Uint8Array[] = []
  let current: Uint8Array | undefined
  // The data of the current buffer is [begin, used): it begins at the file position's offset
  // in its page, so that page-aligned file positions sit on page-aligned memory (direct I/O).
  let begin = 0
  let used = 0
  let at = position
  const busy = new Set<Promise<void>>()
  let failure: unknown
  let unflushed = 0
  let flushing: Promise<void> | undefined

  const dispatch = () => {
    const slot = current as Uint8Array
    const data = slot.subarray(begin, used)
    current = undefined
    const write = local(out.write(data, at))
    const job: Promise<void> = Promise.all([write, hasher.update(data)]).then(
      () => {
        busy.delete(job)
        free.push(slot)
      },
      (err: unknown) => {
        busy.delete(job)
        failure ??= toSubstrateError(err)
      },
    )
    busy.add(job)
    at += data.length
    unflushed += data.length
    if (unflushed >= FLUSH_EVERY && flushing === undefined) {
      unflushed = 0
      // Only a head start for the final fsync: its failure is ignored here.
      flushing = write
        .then(() => out.sync())
        .catch(() => {})
        .then(() => {
          flushing = undefined
        })
    }
  }
  const failed = () => Promise.reject(failure)

  return {
    space() {
      if (current === undefined) {
        current = free.pop() ?? allocAligned(SLOT)
        begin = used = at % DIRECT_ALIGN
      }
      return current.subarray(used)
    },
    filled(n) {
      if (failure !== undefined) return failed()
      used += n
      if (current !== undefined && used < current.length) return undefined
      dispatch()
      if (busy.size < MAX_BUSY) return undefined
      return Promise.race(busy).then(() => (failure === undefined ? undefined : failed()))
    },
    async drain() {
      if (current !== undefined && used > begin) dispatch()
      await Promise.all(busy)
      await flushing
      if (failure !== undefined) throw failure
    },
  }
}

/** Local file errors become typed at once (ENOSPC → E_DISK_FULL): they are not worth a retry. */
export function local<T>(step: Promise<T>): Promise<T> {
  return step.catch((err: unknown) => Promise.reject(toSubstrateError(err)))
}
