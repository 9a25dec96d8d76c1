// Adapts the local runtime to the worker side of the job protocol: an admitted manifest
// becomes a Runtime.generate() request on the exact model its digest names. Kept here, not in
// the composition root, so the daemon wires the mesh with one call.

import { SubstrateError } from '../errors.ts'
import type { ModelRecord } from '../models/types.ts'
import type { Runtime } from '../runtime/runtime.ts'
import type { RunJob } from './job-worker.ts'

export interface RuntimeJobComponents {
  runtime: Pick<Runtime, 'generate'>
  /** The local model with this digest, if this node holds it. */
  modelByDigest(digest: string): ModelRecord | undefined
}

export function createRuntimeJobRunner(components: RuntimeJobComponents): RunJob {
  return (job, signal) => {
    const model = components.modelByDigest(job.manifest.model)
    if (model === undefined) {
      // Admission already checked; the model was removed in between.
      throw new SubstrateError('E_MODEL_NOT_FOUND', `model ${job.manifest.model} is no longer held here`)
    }
    const { mode, prompt, messages, options } = job.manifest
    return components.runtime.generate({ model, mode, prompt, messages, options, signal })
  }
}
