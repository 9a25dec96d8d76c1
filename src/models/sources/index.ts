// Picks the source that understands a pull reference.

import { SubstrateError } from '../../errors.ts'
import { createHuggingFaceSource } from './huggingface.ts'
import { createOllamaSource } from './ollama.ts'
import type { ModelSource } from './plan.ts'
import { createUrlSource } from './url.ts'

/** The sources every node knows: Hugging Face, the Ollama library and plain URLs. */
export function defaultSources(
  init: { hfEndpoint: string; ollamaRegistry: string },
  env: NodeJS.ProcessEnv,
): ModelSource[] {
  const token = env.HF_TOKEN
  return [
    createHuggingFaceSource({ endpoint: init.hfEndpoint, ...(token ? { token } : {}) }),
    createOllamaSource({ registry: init.ollamaRegistry }),
    createUrlSource(),
  ]
}

/** True when `ref` names something to download rather than a model already known locally. */
export function isSourceRef(sources: readonly ModelSource[], ref: string): boolean {
  return sources.some((s) => s.matches(ref))
}

export function sourceFor(sources: readonly ModelSource[], ref: string): ModelSource {
  const source = sources.find((s) => s.matches(ref))
  if (source === undefined) {
    throw new SubstrateError('E_INVALID_ARGUMENT', `cannot pull "${ref}": not a URL or a known source`, {
      hint: 'pull an http(s) URL, hf:ORG/REPO/FILE.gguf, hf:ORG/REPO:QUANT or ollama:NAME[:TAG]',
    })
  }
  return source
}
