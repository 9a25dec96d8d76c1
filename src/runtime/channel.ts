// A tiny unbounded async queue: producers push, one consumer iterates. Used to turn the
// runner's callback-style events into an async iterator per request.

export interface Channel<T> extends AsyncIterable<T> {
  push(value: T): void
  close(): void
  fail(err: unknown): void
}

export function createChannel<T>(): Channel<T> {
  const buffer: T[] = []
  let closed = false
  let failure: { err: unknown } | undefined
  let wake: (() => void) | undefined
  const notify = () => {
    const w = wake
    wake = undefined
    w?.()
  }
  return {
    push(value) {
      if (closed) return
      buffer.push(value)
      notify()
    },
    close() {
      closed = true
      notify()
    },
    fail(err) {
      if (closed) return
      failure = { err }
      closed = true
      notify()
    },
    async *[Symbol.asyncIterator]() {
      while (true) {
        if (buffer.length > 0) {
          yield buffer.shift() as T
          continue
        }
        if (failure) throw failure.err
        if (closed) return
        await new Promise<void>((resolve) => {
          wake = resolve
        })
      }
    },
  }
}
