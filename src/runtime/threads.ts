// Choosing llama.cpp's thread count by measurement. node-llama-cpp's prebuilt binaries
// have no OpenMP and attach no persistent thread pool, so every decode starts and joins its
// worker threads; on small models that costs more than the extra core gives back
// (measured on a 2-core VM, 25M-parameter model: 1 thread ~250 tokens/s, 2 threads ~85).
// On large models the compute dominates and all cores win. Rather than guess where the
// line is for this machine and build, the runner times both on the loaded model.

import { availableParallelism } from 'node:os'
import type { LlamaModel } from 'node-llama-cpp'

/** Above this file size a decode step is long enough that thread start-up is noise. */
const CALIBRATE_BELOW_BYTES = 1024 ** 3
const PROBE_TOKENS = 16

export interface ThreadChoice {
  threads: number
  /** tokens/s measured per candidate, when calibrated */
  measured: Record<number, number>
}

async function decodeRate(model: LlamaModel, threads: number): Promise<number> {
  const context = await model.createContext({ contextSize: 256, sequences: 1, threads })
  try {
    const sequence = context.getSequence()
    const prompt = model.tokenize('calibrate')
    let n = 0
    let started = 0
    for await (const _token of sequence.evaluate(prompt, { temperature: 0 })) {
      if (n === 2) started = performance.now() // skip the prompt and the first step
      if (++n >= PROBE_TOKENS + 2) break
    }
    return (PROBE_TOKENS * 1000) / (performance.now() - started)
  } finally {
    await context.dispose()
  }
}

/** `configured` > 0 is the user's explicit choice; 0 means measure. */
export async function chooseThreads(
  model: LlamaModel,
  configured: number,
  fileSize: number,
): Promise<ThreadChoice> {
  const cores = Math.max(1, availableParallelism())
  if (configured > 0) return { threads: configured, measured: {} }
  if (cores === 1 || fileSize >= CALIBRATE_BELOW_BYTES) return { threads: cores, measured: {} }
  const measured: Record<number, number> = {}
  for (const candidate of [1, cores]) measured[candidate] = await decodeRate(model, candidate)
  const threads = (measured[cores] ?? 0) > (measured[1] ?? 0) * 1.1 ? cores : 1
  return { threads, measured }
}
