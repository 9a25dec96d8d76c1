// The Ollama library, through the registry's manifest + blob protocol (the Docker
// registry v2 API that `ollama pull` speaks):
//   GET {registry}/v2/{namespace}/{name}/manifests/{tag}
//       Accept: application/vnd.docker.distribution.manifest.v2+json
//   GET {registry}/v2/{namespace}/{name}/blobs/sha256:{hex}   (may redirect to a CDN)
// `ollama:llama3.2:1b` is namespace "library", name "llama3.2", tag "1b" (default
// "latest"); `ollama:user/name:tag` names another namespace. The layer of media type
// application/vnd.ollama.image.model is the GGUF, fetched by the resumable downloader
// and verified by its digest; the small template, params, system and license layers are
// read here (each verified by its digest too) and kept with the model.

import { createHash } from 'node:crypto'
import { z } from 'zod'
import { SubstrateError } from '../../errors.ts'
import type { ModelExtras } from '../types.ts'
import { metaRequest, readJson, readText, trimSlash, unexpected } from './http-meta.ts'
import type { HttpFetch, ModelSource, PullPlan, SourceContext } from './plan.ts'

export interface OllamaRegistryInit {
  /** https://registry.ollama.ai */
  registry: string
}

export const MANIFEST_MEDIA_TYPE = 'application/vnd.docker.distribution.manifest.v2+json'
const MEDIA = 'application/vnd.ollama.image.'

const digestSchema = z.string().regex(/^sha256:[0-9a-f]{64}$/)
const manifestSchema = z.object({
  schemaVersion: z.literal(2),
  layers: z.array(z.object({ mediaType: z.string(), digest: digestSchema, size: z.number().int().min(0) })),
})
type Layer = z.infer<typeof manifestSchema>['layers'][number]

const PART = /^[a-z0-9][a-z0-9._-]*$/
const TAG = /^[a-z0-9_][a-z0-9._-]{0,127}$/i

export function parseOllamaRef(ref: string): { namespace: string; name: string; tag: string } {
  const body = ref.slice('ollama:'.length)
  const colon = body.lastIndexOf(':')
  const path = colon >= 0 ? body.slice(0, colon) : body
  const tag = colon >= 0 ? body.slice(colon + 1) : 'latest'
  const parts = path.split('/')
  const [namespace, name] = parts.length === 1 ? ['library', parts[0]!] : parts
  if (
    parts.length > 2 ||
    namespace === undefined ||
    name === undefined ||
    !PART.test(namespace) ||
    !PART.test(name) ||
    !TAG.test(tag)
  ) {
    throw new SubstrateError('E_INVALID_ARGUMENT', `"${ref}" is not an Ollama library name`, {
      hint: 'write ollama:NAME[:TAG] or ollama:NAMESPACE/NAME[:TAG], like ollama:llama3.2:1b',
    })
  }
  return { namespace, name, tag }
}

/** The small layers worth keeping: at most this big each. */
const EXTRA_LIMIT = 1 << 20

export function createOllamaSource(init: OllamaRegistryInit): ModelSource {
  const registry = trimSlash(init.registry)
  const who = `the Ollama registry (${registry})`

  async function blobText(repo: string, layer: Layer, ctx: SourceContext): Promise<string> {
    const url = `${registry}/v2/${repo}/blobs/${layer.digest}`
    const status = `pulling ${layer.digest.slice(7, 19)}`
    ctx.onProgress?.({ status, digest: layer.digest, total: layer.size, completed: 0 })
    const res = await metaRequest(url, { who, ...(ctx.signal === undefined ? {} : { signal: ctx.signal }) })
    if (!res.ok) throw unexpected(res, url, who)
    const text = await readText(res, `blob ${layer.digest}`, EXTRA_LIMIT)
    const actual = `sha256:${createHash('sha256').update(text, 'utf8').digest('hex')}`
    if (actual !== layer.digest) {
      throw new SubstrateError(
        'E_CHECKSUM_MISMATCH',
        `${who} sent blob ${layer.digest} with digest ${actual}`,
      )
    }
    ctx.onProgress?.({ status, digest: layer.digest, total: layer.size, completed: layer.size })
    return text
  }

  async function extrasOf(repo: string, layers: Layer[], ctx: SourceContext): Promise<ModelExtras> {
    const extras: ModelExtras = {}
    for (const layer of layers) {
      const kind = layer.mediaType.startsWith(MEDIA) ? layer.mediaType.slice(MEDIA.length) : ''
      if (!['template', 'system', 'params', 'license'].includes(kind)) continue
      if (layer.size > EXTRA_LIMIT) {
        ctx.logger.warn('skipping an oversized manifest layer', { kind, size: layer.size })
        continue
      }
      const text = await blobText(repo, layer, ctx)
      if (kind === 'params') {
        let params: unknown
        try {
          params = JSON.parse(text)
        } catch {}
        if (typeof params !== 'object' || params === null || Array.isArray(params)) {
          throw new SubstrateError('E_PROTOCOL', `${who}: the params layer of ${repo} is not a JSON object`)
        }
        extras.params = params as Record<string, unknown>
      } else if (kind === 'license') {
        extras.license = extras.license === undefined ? text : `${extras.license}\n\n${text}`
      } else {
        extras[kind as 'template' | 'system'] = text
      }
    }
    return extras
  }

  return {
    id: 'ollama',
    matches: (ref) => ref.startsWith('ollama:'),
    async plan(input, ctx): Promise<PullPlan> {
      const { namespace, name, tag } = parseOllamaRef(input)
      const repo = `${namespace}/${name}`
      const asked = `${namespace === 'library' ? '' : `${namespace}/`}${name}:${tag}`
      const url = `${registry}/v2/${repo}/manifests/${tag}`
      const res = await metaRequest(url, {
        who,
        headers: { accept: MANIFEST_MEDIA_TYPE },
        ...(ctx.signal === undefined ? {} : { signal: ctx.signal }),
      })
      if (res.status === 404) {
        await res.body?.cancel()
        throw new SubstrateError('E_MODEL_NOT_FOUND', `the Ollama library has no ${asked} (${registry})`, {
          hint: 'check the name and tag on https://ollama.com/library',
        })
      }
      if (!res.ok) throw unexpected(res, url, who)
      const manifest = manifestSchema.safeParse(await readJson(res, `the manifest of ${asked}`))
      if (!manifest.success) {
        throw new SubstrateError('E_PROTOCOL', `${who} sent a manifest for ${asked} in an unknown shape`)
      }
      const models = manifest.data.layers.filter((l) => l.mediaType === `${MEDIA}model`)
      if (models.length !== 1) {
        throw new SubstrateError(
          'E_INVALID_MODEL_FILE',
          `ollama:${asked} has ${models.length} model layers; substrate takes models with exactly one GGUF`,
        )
      }
      const model = models[0]!
      const extras = await extrasOf(repo, manifest.data.layers, ctx)
      const fetch: HttpFetch = { kind: 'http', url: `${registry}/v2/${repo}/blobs/${model.digest}` }
      return {
        source: `ollama:${asked}`,
        name: asked,
        model: { fetch, sha256: model.digest.slice(7), size: model.size, label: `ollama:${asked}` },
        ...(Object.keys(extras).length === 0 ? {} : { extras }),
      }
    },
  }
}
