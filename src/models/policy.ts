// Which models this node may hold, and how much disk the model store may use. The lists
// come from config today; governance will set them later through the same shape.
//
// A rule is a glob (`*` matches anything) compared with every name a model goes by: the
// reference it was pulled from ("hf:org/repo/file.gguf", "ollama:llama3.2:1b", a URL),
// the name it is stored under ("llama3.2:1b") and its digest ("sha256:…"). A deny rule
// that matches any of them refuses the model; a non-empty allow list must match one.

import { SubstrateError } from '../errors.ts'

export interface ModelPolicyInit {
  allow?: readonly string[]
  deny?: readonly string[]
  /** bytes the store's blobs may take in all; undefined or 0 = no limit */
  quotaBytes?: number
}

export interface ModelSubject {
  source?: string
  name?: string
  digest?: string
}

export interface ModelPolicy {
  /**
   * Throws E_POLICY_DENIED unless the rules let this model in. `denyOnly` checks just the
   * deny rules: for a reference not yet resolved, whose canonical names an allow rule may
   * be written against.
   */
  check(subject: ModelSubject, opts?: { denyOnly?: boolean }): void
  /** Throws E_QUOTA_EXCEEDED when `incoming` more bytes would not fit beside `used`. */
  checkQuota(used: number, incoming: number, what: string): void
  readonly quotaBytes: number | undefined
}

function globToRegExp(glob: string): RegExp {
  const body = glob
    .split('*')
    .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*')
  return new RegExp(`^${body}$`, 'i')
}

export function createModelPolicy(init: ModelPolicyInit = {}): ModelPolicy {
  const allow = (init.allow ?? []).map((glob) => ({ glob, re: globToRegExp(glob) }))
  const deny = (init.deny ?? []).map((glob) => ({ glob, re: globToRegExp(glob) }))
  const quotaBytes = init.quotaBytes === undefined || init.quotaBytes <= 0 ? undefined : init.quotaBytes
  return {
    quotaBytes,
    check(subject, opts = {}) {
      const names = [subject.source, subject.name, subject.digest].filter((n): n is string => n !== undefined)
      const what = subject.source ?? subject.name ?? subject.digest ?? 'the model'
      for (const rule of deny) {
        const hit = names.find((n) => rule.re.test(n))
        if (hit !== undefined) {
          throw new SubstrateError(
            'E_POLICY_DENIED',
            `${what} is refused: ${hit} matches deny rule "${rule.glob}"`,
            {
              hint: 'see the models.deny setting (substrate config)',
            },
          )
        }
      }
      if (!opts.denyOnly && allow.length > 0 && !allow.some((rule) => names.some((n) => rule.re.test(n)))) {
        throw new SubstrateError('E_POLICY_DENIED', `${what} is refused: it matches no models.allow rule`, {
          hint: `allowed: ${allow.map((r) => r.glob).join(', ')}`,
        })
      }
    },
    checkQuota(used, incoming, what) {
      if (quotaBytes === undefined || used + incoming <= quotaBytes) return
      throw new SubstrateError(
        'E_QUOTA_EXCEEDED',
        `${what} needs ${incoming} bytes, but the model store holds ${used} of its ${quotaBytes}-byte quota`,
        { hint: 'remove models (substrate rm) or raise models.quota' },
      )
    },
  }
}
