// An idle daemon should cost a machine little. Two things it does while starting stay
// resident for its whole idle life unless it takes care (BENCHMARKS.md "Daemon footprint"):
//  - Loading its code (libp2p alone is ~800 modules) allocates fast enough that V8 doubles
//    the young generation several times (~20 MiB measured). So while the daemon starts, the
//    young generation keeps its initial size; once it is ready the default growth comes back
//    for real load, and the garbage of starting up is collected at once instead of whenever
//    the heap next fills.
//  - Start-up code runs once, yet it is hot enough that V8's optimizing tiers (Maglev,
//    Turbofan) and its baseline compiler (Sparkplug) compile parts of it. That costs machine
//    code and compiler zones on the heap, and the compilers' own code in the node binary
//    (~6 MiB of Turbofan alone) is paged in for good. So the daemon starts on the
//    interpreter; every tier comes back once it is ready, so request handling, token relay
//    and signing get optimized as usual when they run.

import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

const DEFAULT_GROWTH = 2 // V8's --semi-space-growth-factor default
/** V8's compiler tiers above the interpreter, all on by default. */
const TIERS = ['sparkplug', 'maglev', 'turbofan'] as const

export interface LeanStartup {
  /**
   * Runs one piece of heavy start-up work with every tier on: folding a large ledger is
   * start-up code too, but its loops run a million times and take twice as long interpreted.
   */
  fullSpeed<T>(work: () => T): T
  /** The daemon is ready: every tier and the young generation's growth come back. */
  ready(): void
}

/** Call before importing the daemon's code; call `ready` once the daemon is ready. */
export function leanStartup(): LeanStartup {
  let lean = true
  const setTiers = (on: boolean) => {
    for (const tier of TIERS) setFlagsFromString(`--${on ? '' : 'no-'}${tier}`)
  }
  setFlagsFromString('--semi-space-growth-factor=1')
  // Read at each tiering decision, so turning them off now and on later takes effect
  // (unlike --max-opt, which V8 folds into other flags once at start).
  setTiers(false)
  return {
    fullSpeed(work) {
      if (!lean) return work()
      setTiers(true)
      try {
        return work()
      } finally {
        if (lean) setTiers(false)
      }
    },
    ready() {
      lean = false
      setTiers(true)
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
    },
  }
}
