// Replay protection for signed envelopes: each (signer, nonce) pair is accepted once. An
// entry only needs to live until its record would be refused as expired anyway, which is
// what keeps the memory bounded: record lifetimes are capped per type in protocol/domains.

import { SubstrateError } from '../errors.ts'
import { DEFAULT_REPLAY_GUARD_ENTRIES } from '../protocol/limits.ts'

/** Remembers (signer, nonce) pairs until they may be forgotten; false means "seen before". */
export interface ReplayGuard {
  /**
   * `expires` is when the pair may be forgotten: after it, the record is refused as expired
   * anyway. `now` is the caller's clock, the one that judged the record fresh; a guard should
   * prune by it when given, so that its idea of "expired" cannot drift from the caller's.
   */
  checkAndRemember(signer: string, nonce: string, expires: number, now?: number): boolean
}

export interface MemoryReplayGuardInit {
  maxEntries?: number
  now?: () => number
}

export interface MemoryReplayGuard extends ReplayGuard {
  readonly size: number
}

/**
 * An in-memory replay guard bounded by `maxEntries`. Entries leave in expiry order (a
 * min-heap, so pruning costs O(log n) per entry). When full of live entries it throws
 * rather than evicting one: forgetting an unexpired nonce would let that record replay.
 */
export function createMemoryReplayGuard(init: MemoryReplayGuardInit = {}): MemoryReplayGuard {
  const maxEntries = init.maxEntries ?? DEFAULT_REPLAY_GUARD_ENTRIES
  const now = init.now ?? Date.now
  const seen = new Map<string, number>()
  // Invariant: heap holds exactly the entries of `seen`, ordered by expiry.
  const heap: Array<{ expires: number; key: string }> = []

  const push = (item: { expires: number; key: string }) => {
    heap.push(item)
    for (let i = heap.length - 1; i > 0; ) {
      const parent = (i - 1) >> 1
      if (heap[parent]!.expires <= heap[i]!.expires) break
      ;[heap[parent], heap[i]] = [heap[i]!, heap[parent]!]
      i = parent
    }
  }
  const pop = () => {
    const last = heap.pop()!
    if (heap.length === 0) return
    heap[0] = last
    for (let i = 0; ; ) {
      const l = 2 * i + 1
      const r = l + 1
      let min = i
      if (l < heap.length && heap[l]!.expires < heap[min]!.expires) min = l
      if (r < heap.length && heap[r]!.expires < heap[min]!.expires) min = r
      if (min === i) break
      ;[heap[min], heap[i]] = [heap[i]!, heap[min]!]
      i = min
    }
  }

  return {
    get size() {
      return seen.size
    },
    checkAndRemember(signer, nonce, expires, at) {
      const t = at ?? now()
      while (heap.length > 0 && heap[0]!.expires <= t) {
        seen.delete(heap[0]!.key)
        pop()
      }
      const key = `${signer}\n${nonce}`
      if (seen.has(key)) return false
      if (expires <= t) return true // nothing to remember: it is refused as expired anyway
      if (seen.size >= maxEntries) {
        throw new SubstrateError(
          'E_INSUFFICIENT_MEMORY',
          `replay guard is full (${maxEntries} live nonces)`,
          {
            hint: 'too many records at once; retry shortly or raise the replay guard size',
          },
        )
      }
      seen.set(key, expires)
      push({ expires, key })
      return true
    },
  }
}
