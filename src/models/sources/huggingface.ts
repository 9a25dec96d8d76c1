// Hugging Face Hub GGUF files, through the Hub's documented HTTP API:
//   hf:ORG/REPO/PATH/FILE.gguf     one file
//   hf:ORG/REPO:Q4_K_M             the one GGUF file whose name carries that quantisation
//   hf:ORG/REPO                    the repository's only GGUF file
// and "@REVISION" after the repo (default "main"). The file listing is
// GET /api/models/{repo}/tree/{revision}?recursive=true (paged by a Link header); the
// metadata is HEAD /{repo}/resolve/{revision}/{file} without following the redirect to
// the CDN, as huggingface_hub's get_hf_file_metadata does: an LFS file carries its sha256
// in X-Linked-Etag and its size in X-Linked-Size. The bytes come from the same resolve
// URL, verified against that sha256. HF_TOKEN, when set, is sent as a bearer token to the
// Hub only (the downloader drops it on the redirect to another host).

import { z } from 'zod'
import { SubstrateError } from '../../errors.ts'
import { metaRequest, readJson, trimSlash, unexpected } from './http-meta.ts'
import type { HttpFetch, ModelSource, PullPlan, SourceContext } from './plan.ts'

export interface HuggingFaceInit {
  /** https://huggingface.co, or a mirror (HF_ENDPOINT) */
  endpoint: string
  token?: string
}

interface HfRef {
  repo: string
  revision: string
  file?: string
  quant?: string
}

const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

export function parseHfRef(ref: string): HfRef {
  const body = ref.slice('hf:'.length)
  const bad = (why: string) =>
    new SubstrateError('E_INVALID_ARGUMENT', `"${ref}" is not a Hugging Face reference: ${why}`, {
      hint: 'write hf:ORG/REPO/FILE.gguf or hf:ORG/REPO:QUANT (like hf:bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M)',
    })
  const [org, repoPart, ...rest] = body.split('/')
  if (org === undefined || repoPart === undefined) throw bad('it needs ORG/REPO')
  let repoName = repoPart
  let quant: string | undefined
  if (rest.length === 0) {
    const colon = repoName.indexOf(':')
    if (colon >= 0) {
      quant = repoName.slice(colon + 1)
      repoName = repoName.slice(0, colon)
      if (!/^[A-Za-z0-9_]+$/.test(quant)) throw bad(`"${quant}" is not a quantisation name`)
    }
  }
  let revision = 'main'
  const at = repoName.indexOf('@')
  if (at >= 0) {
    revision = repoName.slice(at + 1)
    repoName = repoName.slice(0, at)
    if (!/^[A-Za-z0-9._/-]+$/.test(revision) || revision.includes('..')) throw bad('bad revision')
  }
  if (!SEGMENT.test(org) || !SEGMENT.test(repoName)) throw bad('bad ORG/REPO')
  const file = rest.length > 0 ? rest.join('/') : undefined
  if (
    file !== undefined &&
    (!file.toLowerCase().endsWith('.gguf') || rest.some((s) => s === '' || s === '..'))
  ) {
    throw bad('the file must be a .gguf path inside the repository')
  }
  return {
    repo: `${org}/${repoName}`,
    revision,
    ...(file === undefined ? {} : { file }),
    ...(quant === undefined ? {} : { quant }),
  }
}

const treeSchema = z.array(
  z.object({
    type: z.string(),
    path: z.string(),
    size: z.number().optional(),
    lfs: z.object({ oid: z.string(), size: z.number() }).optional(),
  }),
)

/** The quantisation as a whole token of the file name: Q4_K_M matches "x-Q4_K_M.gguf", not "x-IQ4_K_M" or "Q4_K_M_L". */
export function carriesQuant(path: string, quant: string): boolean {
  const name = path.split('/').pop() ?? path
  const escaped = quant.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  return new RegExp(`(?<![a-z0-9])${escaped}(?![a-z0-9_])`, 'i').test(name)
}

export function createHuggingFaceSource(init: HuggingFaceInit): ModelSource {
  const endpoint = trimSlash(init.endpoint)
  const who = `Hugging Face (${endpoint})`
  const auth: Record<string, string> =
    init.token === undefined || init.token === '' ? {} : { authorization: `Bearer ${init.token}` }
  const encodePath = (p: string) => p.split('/').map(encodeURIComponent).join('/')

  async function listGguf(ref: HfRef, ctx: SourceContext): Promise<string[]> {
    let url: string | undefined =
      `${endpoint}/api/models/${ref.repo}/tree/${encodeURIComponent(ref.revision)}?recursive=true`
    const files: string[] = []
    for (let page = 0; url !== undefined && page < 100; page++) {
      const res = await metaRequest(url, { who, headers: auth, ...signalOf(ctx) })
      if (res.status === 404) {
        await res.body?.cancel()
        throw notFound(ref, res.headers.get('x-error-code'))
      }
      if (!res.ok) throw unexpected(res, url, who)
      const entries = treeSchema.safeParse(await readJson(res, `the file listing of ${ref.repo}`))
      if (!entries.success) {
        throw new SubstrateError(
          'E_PROTOCOL',
          `${who} sent a file listing of ${ref.repo} in an unknown shape`,
        )
      }
      for (const e of entries.data)
        if (e.type === 'file' && e.path.toLowerCase().endsWith('.gguf')) files.push(e.path)
      url = nextPage(res.headers.get('link'), url)
    }
    return files
  }

  function notFound(ref: HfRef, errorCode: string | null, file?: string): SubstrateError {
    const what =
      errorCode === 'RevisionNotFound'
        ? `revision "${ref.revision}" of ${ref.repo}`
        : errorCode === 'EntryNotFound' && file !== undefined
          ? `${file} in ${ref.repo}@${ref.revision}`
          : file !== undefined && errorCode !== 'RepoNotFound'
            ? `${ref.repo}/${file}`
            : `repository ${ref.repo}`
    return new SubstrateError('E_MODEL_NOT_FOUND', `Hugging Face has no ${what} (${endpoint})`, {
      hint: 'check the spelling; a private or gated repository also answers this without HF_TOKEN',
    })
  }

  function pick(ref: HfRef, files: string[]): string {
    const quant = ref.quant
    const matching = quant === undefined ? files : files.filter((f) => carriesQuant(f, quant))
    if (matching.length === 1) return matching[0]!
    const asked = quant === undefined ? `${ref.repo}` : `${ref.repo}:${quant}`
    if (files.length === 0) {
      throw new SubstrateError('E_MODEL_NOT_FOUND', `Hugging Face repository ${ref.repo} has no GGUF files`, {
        hint: 'substrate runs GGUF models: look for a "-GGUF" repository of the model',
      })
    }
    const list = (quant === undefined || matching.length === 0 ? files : matching).slice(0, 30).join(', ')
    if (matching.length === 0) {
      throw new SubstrateError(
        'E_MODEL_NOT_FOUND',
        `Hugging Face repository ${ref.repo} has no GGUF file for ${quant}`,
        {
          hint: `its GGUF files: ${list}`,
        },
      )
    }
    throw new SubstrateError(
      'E_INVALID_ARGUMENT',
      `${asked} is ambiguous: ${matching.length} GGUF files match`,
      {
        hint: `name one: hf:${ref.repo}/FILE with FILE one of ${list}`,
      },
    )
  }

  /** HEAD on the resolve URL, following only redirects within the Hub (a renamed repo). */
  async function metadata(ref: HfRef, file: string, ctx: SourceContext) {
    let url = `${endpoint}/${ref.repo}/resolve/${encodeURIComponent(ref.revision)}/${encodePath(file)}`
    const download = url
    for (let hop = 0; hop < 5; hop++) {
      const res = await metaRequest(url, {
        who,
        method: 'HEAD',
        redirect: 'manual',
        headers: { ...auth, 'accept-encoding': 'identity' },
        ...signalOf(ctx),
      })
      await res.body?.cancel()
      if (res.status === 404) throw notFound(ref, res.headers.get('x-error-code'), file)
      const linkedEtag = res.headers.get('x-linked-etag')
      const location = res.headers.get('location')
      const redirect = res.status >= 300 && res.status < 400 && location !== null
      if (redirect && linkedEtag === null && new URL(location, url).origin === new URL(endpoint).origin) {
        url = new URL(location, url).href
        continue
      }
      if (!res.ok && !redirect) throw unexpected(res, url, who)
      const etag = (linkedEtag ?? res.headers.get('etag') ?? '').replace(/^W\//, '').replace(/"/g, '')
      const size = Number(res.headers.get('x-linked-size') ?? res.headers.get('content-length') ?? Number.NaN)
      return {
        url: redirect && linkedEtag === null ? new URL(location, url).href : download,
        // A git (non-LFS) file's ETag is a sha1, not a sha256: then there is nothing to check against.
        ...(/^[0-9a-f]{64}$/.test(etag) ? { sha256: etag } : {}),
        ...(Number.isSafeInteger(size) && size >= 0 ? { size } : {}),
      }
    }
    throw new SubstrateError('E_DOWNLOAD_FAILED', `${who} redirected ${download} too many times`)
  }

  return {
    id: 'hf',
    matches: (ref) => ref.startsWith('hf:'),
    async plan(input, ctx): Promise<PullPlan> {
      const ref = parseHfRef(input)
      const file = ref.file ?? pick(ref, await listGguf(ref, ctx))
      const meta = await metadata(ref, file, ctx)
      const fetch: HttpFetch = { kind: 'http', url: meta.url, headers: auth }
      const base = (file.split('/').pop() ?? file).replace(/\.gguf$/i, '')
      return {
        source: `hf:${ref.repo}${ref.revision === 'main' ? '' : `@${ref.revision}`}/${file}`,
        name: modelNameFor(ref, base),
        model: {
          fetch,
          label: file,
          ...(meta.sha256 === undefined ? {} : { sha256: meta.sha256 }),
          ...(meta.size === undefined ? {} : { size: meta.size }),
        },
      }
    },
  }
}

/** "bartowski/Llama-3.2-1B-Instruct-GGUF" + Q4_K_M → "llama-3.2-1b-instruct:q4_k_m" */
function modelNameFor(ref: HfRef, fileBase: string): string {
  const repo = ref.repo.split('/')[1]!.replace(/[-_.]gguf$/i, '')
  const tag = (ref.quant ?? fileBase).slice(0, 128)
  return `${repo}:${tag}`
    .toLowerCase()
    .replace(/[^a-z0-9._:-]/g, '-')
    .slice(0, 200)
}

function signalOf(ctx: SourceContext): { signal?: AbortSignal } {
  return ctx.signal === undefined ? {} : { signal: ctx.signal }
}

/** The rel="next" target of a Link header (the Hub pages long listings this way). */
function nextPage(link: string | null, base: string): string | undefined {
  const m = link === null ? null : /<([^>]+)>;\s*rel="next"/.exec(link)
  return m === null ? undefined : new URL(m[1]!, base).href
}
