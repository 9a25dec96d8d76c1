// Coalesces tokens into frames when they come faster than the stream takes them. A token
// that finds the stream idle goes out at the end of the current event-loop turn, so a lone
// token waits no longer than it would anyway; tokens produced in the same turn, or while a
// frame is in flight, share the next frame. The per-frame cost (CBOR, Noise, Yamux and a
// syscall on both ends) then stops growing with a fast model's token rate.

export interface TokenBatcher {
  /** Queues text; resolves at once unless too much is waiting (that wait is the backpressure). */
  push(text: string): Promise<void>
  /** Resolves when everything queued was sent; rejects with the first send error. */
  flush(): Promise<void>
}

export interface TokenBatcherInit {
  /** Longest text in one frame, in UTF-16 code units. */
  maxFrameChars: number
  /** Queued text beyond which `push` waits for the peer to read. */
  maxPendingChars: number
}

/** Where to cut `text` at most `max` units in without splitting a surrogate pair. */
function cutAt(text: string, max: number): number {
  if (text.length <= max) return text.length
  const code = text.charCodeAt(max - 1)
  return code >= 0xd800 && code <= 0xdbff ? max - 1 : max
}

export function createTokenBatcher(
  send: (text: string) => Promise<void>,
  init: TokenBatcherInit,
): TokenBatcher {
  let pending = ''
  let pump: Promise<void> | undefined
  let failure: unknown
  let failed = false

  const drain = async () => {
    await new Promise<void>((resolve) => setImmediate(resolve))
    while (pending.length > 0) {
      const cut = cutAt(pending, init.maxFrameChars)
      const text = pending.slice(0, cut)
      pending = pending.slice(cut)
      await send(text)
    }
  }
  const start = () => {
    if (pump !== undefined || failed) return
    pump = drain().then(
      () => {
        pump = undefined
        // Text pushed after the loop saw an empty queue but before this ran.
        if (pending.length > 0) start()
      },
      (err: unknown) => {
        failure = err
        failed = true
        pump = undefined
      },
    )
  }
  const check = () => {
    if (failed) throw failure
  }

  return {
    async push(text) {
      check()
      pending += text
      start()
      while (pending.length > init.maxPendingChars && pump !== undefined) await pump
      check()
    },
    async flush() {
      while (pump !== undefined) await pump
      check()
    },
  }
}
