// Plain http(s) URLs: the plan is the URL itself; nothing is known before the download.

import { SubstrateError } from '../../errors.ts'
import { fileNameFromUrl } from '../pull.ts'
import type { HttpFetch, ModelSource, PullPlan } from './plan.ts'

export function createUrlSource(): ModelSource {
  return {
    id: 'url',
    matches: (ref) => /^https?:\/\//i.test(ref),
    async plan(ref): Promise<PullPlan> {
      try {
        new URL(ref)
      } catch {
        throw new SubstrateError('E_INVALID_ARGUMENT', `"${ref}" is not a URL`)
      }
      const fetch: HttpFetch = { kind: 'http', url: ref }
      return { source: ref, name: fileNameFromUrl(ref), model: { fetch, label: fileNameFromUrl(ref) || ref } }
    },
  }
}
