// The one path from an API request to generated tokens, shared by the Ollama and OpenAI
// routes (and later the mesh): validate the sampling options, resolve the model, run it.

import { SubstrateError } from '../errors.ts'
import type { ModelStore } from '../models/types.ts'
import type { SamplingOptions } from '../runtime/protocol.ts'
import type { GenerateRequest, Runtime, RuntimeEvent } from '../runtime/runtime.ts'
import type { OllamaOptions } from './types.ts'

/** Above this a token limit is a mistake, not a wish: no context is that long. */
export const MAX_PREDICT = 1_048_576

/** A runtime request that names its model instead of holding the resolved record. */
export type InferenceRequest = Omit<GenerateRequest, 'model'> & { model: string }

export interface InferenceComponents {
  models: ModelStore
  runtime: Runtime
}

/** Ollama's num_predict: -1 (and -2, "fill the context") mean no limit; 0 means no tokens. */
export function maxTokensFromPredict(numPredict: number | undefined | null): number | undefined {
  if (numPredict === undefined || numPredict === null || numPredict === -1 || numPredict === -2)
    return undefined
  if (!Number.isInteger(numPredict) || numPredict < -2) {
    throw new SubstrateError(
      'E_INVALID_ARGUMENT',
      `num_predict must be -1, -2 or a token count ≥ 0, not ${numPredict}`,
    )
  }
  if (numPredict > MAX_PREDICT) {
    throw new SubstrateError(
      'E_INVALID_ARGUMENT',
      `num_predict ${numPredict} is absurd: the limit is ${MAX_PREDICT}`,
    )
  }
  return numPredict
}

export function samplingFromOllama(options: OllamaOptions | undefined): SamplingOptions {
  const o = options ?? {}
  return {
    temperature: o.temperature,
    topK: o.top_k,
    topP: o.top_p,
    minP: o.min_p,
    seed: o.seed,
    repeatPenalty: o.repeat_penalty,
    maxTokens: maxTokensFromPredict(o.num_predict),
    stop: o.stop,
  }
}

export async function* infer(
  components: InferenceComponents,
  req: InferenceRequest,
): AsyncGenerator<RuntimeEvent> {
  const model = await components.models.resolve(req.model)
  if (req.options.maxTokens === 0) {
    yield {
      type: 'done',
      stats: { reason: 'length', promptTokens: 0, outputTokens: 0, promptEvalMs: 0, evalMs: 0 },
      loadMs: 0,
      totalMs: 0,
    }
    return
  }
  yield* components.runtime.generate({ ...req, model })
}
