// Coalesces tokens into frames (the runner's messages to the daemon, the mesh's job frames).
// A token that comes after a quiet spell goes out at the end of the current event-loop
// turn, so time to first token is untouched; tokens that follow
// closely are held at most `windowMs` and share a frame. Each frame costs CBOR, Noise, Yamux
// and socket writes on both ends, and a loopback write syscall alone measured ~0.3 ms on
// this kind of machine, so a fast model sending one frame per token paid for it in speed.

export interface TokenBatcher {
  /**
   * Queues the text of `tokens` tokens (default one); resolves at once unless too much is
   * waiting (that wait is the backpressure).
   */
  push(text: string, tokens?: number): Promise<void>
  /** Resolves when everything queued was sent; rejects with the first send error. */
  flush(): Promise<void>
}

export interface TokenBatcherInit {
  /** Longest text in one frame, in UTF-16 code units. */
  maxFrameChars: number
  /** Queued text beyond which `push` waits for the peer to read. */
  maxPendingChars: number
  /** Longest a token waits for company after a frame was sent; 0 sends every turn. */
  windowMs?: number
}

/** Where to cut `text` at most `max` units in without splitting a surrogate pair. */
function cutAt(text: string, max: number): number {
  if (text.length <= max) return text.length
  const code = text.charCodeAt(max - 1)
  return code >= 0xd800 && code <= 0xdbff ? max - 1 : max
}

export function createTokenBatcher(
  /** `tokens`: how many tokens the text holds (all of them go with the first frame of a cut batch). */
  send: (text: string, tokens: number) => Promise<void>,
  init: TokenBatcherInit,
): TokenBatcher {
  let pending = ''
  let pendingTokens = 0
  let pump: Promise<void> | undefined
  let failure: unknown
  let failed = false

  const windowMs = init.windowMs ?? 0
  let lastSend = Number.NEGATIVE_INFINITY
  const drain = async () => {
    const wait = lastSend + windowMs - performance.now()
    await new Promise<void>((resolve) => (wait > 0 ? setTimeout(resolve, wait) : setImmediate(resolve)))
    lastSend = performance.now()
    while (pending.length > 0) {
      const cut = cutAt(pending, init.maxFrameChars)
      const text = pending.slice(0, cut)
      pending = pending.slice(cut)
      const tokens = pendingTokens
      pendingTokens = 0
      await send(text, tokens)
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
    async push(text, tokens = 1) {
      check()
      pending += text
      pendingTokens += tokens
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
