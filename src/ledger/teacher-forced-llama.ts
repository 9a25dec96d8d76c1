// The verifier's prefill with node-llama-cpp (PLATFORM-FACTS: LlamaContextSequence
// .controlledEvaluate): prompt + claimed output go in as one batch, and at each sampled
// output position we read the model's full next-token distribution one token earlier.
// One prefill of n tokens is far cheaper than generating them one by one.
//
// This loads a model in the calling process, for tests and bench/ledger-verify.ts. In the
// daemon the check runs in the model's sandboxed runner (runtime `score`, the same
// scoreOnSequence); node-llama-cpp is imported lazily so that the ledger never loads it.

import { scoreOnSequence } from '../runtime/teacher-forced.ts'
import type { TeacherForcedScorer } from './verify-receipt.ts'

export interface LlamaScorer extends TeacherForcedScorer {
  /** The model's tokenizer, for turning a claimed output text into the tokens to check. */
  tokenize(modelPath: string, text: string): Promise<number[]>
  close(): Promise<void>
}

type Lib = typeof import('node-llama-cpp')
type Llama = Awaited<ReturnType<Lib['getLlama']>>
type Model = Awaited<ReturnType<Llama['loadModel']>>
type Context = Awaited<ReturnType<Model['createContext']>>

export interface LlamaScorerInit {
  contextSize?: number
  gpu?: boolean
  /**
   * CPU threads per context. 1 by default: on a busy machine llama.cpp's spinning worker
   * threads made a 25M-parameter model 600x slower here (2.7 s instead of 4 ms a token).
   */
  threads?: number
}

export async function createLlamaScorer(init: LlamaScorerInit = {}): Promise<LlamaScorer> {
  const lib: Lib = await import('node-llama-cpp')
  const llama = await lib.getLlama({
    gpu: init.gpu === true ? 'auto' : false,
    logLevel: lib.LlamaLogLevel.error,
  })
  const loaded = new Map<string, { model: Model; context: Context }>()

  async function open(modelPath: string) {
    let entry = loaded.get(modelPath)
    if (entry === undefined) {
      const model = await llama.loadModel({ modelPath })
      const context = await model.createContext({
        contextSize: init.contextSize ?? 2048,
        sequences: 1,
        threads: init.threads ?? 1,
      })
      entry = { model, context }
      loaded.set(modelPath, entry)
    }
    return entry
  }

  return {
    async tokenize(modelPath, text) {
      const { model } = await open(modelPath)
      return [...model.tokenize(text)]
    },
    async score({ modelPath, ...input }) {
      const { context } = await open(modelPath)
      const sequence = context.getSequence()
      try {
        return await scoreOnSequence(sequence, input)
      } finally {
        sequence.dispose()
      }
    },
    async close() {
      for (const { model, context } of loaded.values()) {
        await context.dispose()
        await model.dispose()
      }
      loaded.clear()
      await llama.dispose()
    },
  }
}
