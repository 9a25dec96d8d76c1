// An idle daemon should cost a machine little. Loading its code (libp2p alone is ~800
// modules) allocates fast enough that V8 doubles the young generation several times, and
// that committed space stays resident for the daemon's whole idle life (~20 MiB measured,
// BENCHMARKS.md "Daemon footprint"). So while the daemon starts, the young generation keeps
// its initial size; once it is ready the default growth comes back for real load, and the
// garbage of starting up is collected at once instead of whenever the heap next fills.

import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

const DEFAULT_GROWTH = 2 // V8's --semi-space-growth-factor default

/** Call before importing the daemon's code; call what it returns once the daemon is ready. */
export function leanStartup(): () => void {
  setFlagsFromString('--semi-space-growth-factor=1')
  return () => {
    setFlagsFromString(`--semi-space-growth-factor=${DEFAULT_GROWTH}`)
    // `gc` exists only in contexts made after --expose-gc; this one is used once and dropped.
    setFlagsFromString('--expose-gc')
    const gc = runInNewContext('gc') as () => void
    setFlagsFromString('--no-expose-gc')
    // A few passes, spaced: each ages unused startup bytecode so a later one can flush it.
    let passes = 0
    const timer = setInterval(() => {
      gc()
      if (++passes === 8) clearInterval(timer)
    }, 250)
    timer.unref()
  }
}
