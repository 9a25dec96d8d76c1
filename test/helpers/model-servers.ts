// Local stand-ins for the Hugging Face Hub and the Ollama registry, speaking each protocol
// as documented (the Hub's tree + resolve API with LFS headers, the registry's manifest +
// blob API), with the model bytes behind a redirect to a separate "CDN" origin. Some
// entries lie on purpose (a wrong X-Linked-Etag, a digest the blob does not match).

import { createHash } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { MANIFEST_MEDIA_TYPE } from '../../src/models/sources/ollama.ts'
import { sendFile, serve } from './http-server.ts'

type Server = Awaited<ReturnType<typeof serve>>
const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex')
const blobs = new Map<string, Buffer>()

// ---- a Hugging Face Hub -------------------------------------------------------------
export const HF_FILES = [
  'README.md',
  'tiny-Q4_K_M.gguf',
  'tiny-IQ4_K_M.gguf',
  'tiny-Q8_0.gguf',
  'tiny-Q5_0.gguf', // its X-Linked-Etag lies
  'split/tiny-Q4_K_S-00001-of-00002.gguf',
  'split/tiny-Q4_K_S-00002-of-00002.gguf',
]
export const LYING_ETAG = 'f'.repeat(64)

function hubHandler(
  req: IncomingMessage,
  res: ServerResponse,
  tiny: Buffer,
  tinySha: string,
  hub: Server,
  cdn: Server,
) {
  const url = new URL(req.url ?? '/', 'http://hub')
  const notFound = (errorCode: string) => {
    res.writeHead(404, { 'x-error-code': errorCode, 'content-type': 'application/json' })
    res.end(JSON.stringify({ error: `${errorCode}` }))
  }
  const tree = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/.exec(url.pathname)
  const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname)
  const repo = tree?.[1] ?? resolve?.[1]
  if (repo !== 'org/Tiny-GGUF' && repo !== 'org/Private-GGUF') return notFound('RepoNotFound')
  if (repo === 'org/Private-GGUF' && req.headers.authorization !== 'Bearer hf_secret') {
    res.writeHead(401, { 'x-error-code': 'GatedRepo' })
    return res.end()
  }
  if ((tree?.[2] ?? resolve?.[2]) !== 'main') return notFound('RevisionNotFound')
  const files = repo === 'org/Private-GGUF' ? ['private-Q4_K_M.gguf'] : HF_FILES
  if (tree) {
    // Two entries a page, linked like the Hub's cursor pagination.
    const cursor = Number(url.searchParams.get('cursor') ?? 0)
    const page = files.slice(cursor, cursor + 2).map((path) => ({
      type: 'file',
      oid: sha(path).slice(0, 40),
      size: path.endsWith('.gguf') ? tiny.length : 10,
      path,
      ...(path.endsWith('.gguf') ? { lfs: { oid: tinySha, size: tiny.length, pointerSize: 134 } } : {}),
    }))
    const headers: Record<string, string> = { 'content-type': 'application/json' }
    if (cursor + 2 < files.length) {
      headers.link = `<${hub.url(`${url.pathname}?recursive=true&cursor=${cursor + 2}`)}>; rel="next"`
    }
    res.writeHead(200, headers)
    return res.end(JSON.stringify(page))
  }
  const file = decodeURIComponent(resolve![3]!)
  if (!files.includes(file)) return notFound('EntryNotFound')
  const etag = file === 'tiny-Q5_0.gguf' ? LYING_ETAG : tinySha
  res.writeHead(302, {
    location: cdn.url(`/repos/${tinySha}`),
    'x-linked-etag': `"${etag}"`,
    'x-linked-size': String(tiny.length),
    'x-repo-commit': 'a'.repeat(40),
    etag: `"${etag}"`,
  })
  res.end()
}

// ---- an Ollama registry -------------------------------------------------------------
export const TEMPLATE = '{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>'
export const PARAMS = JSON.stringify({ temperature: 0.2, stop: ['<|user|>'], num_ctx: 512 })
export const SYSTEM = 'You are tiny.'

function layer(mediaType: string, body: Buffer | string) {
  const bytes = Buffer.from(body)
  const digest = `sha256:${sha(bytes)}`
  blobs.set(digest, bytes)
  return { mediaType, digest, size: bytes.length }
}

function manifests(tiny: Buffer, tinySha: string): Record<string, object> {
  const model = {
    mediaType: 'application/vnd.ollama.image.model',
    digest: `sha256:${tinySha}`,
    size: tiny.length,
  }
  const extras = [
    layer('application/vnd.ollama.image.template', TEMPLATE),
    layer('application/vnd.ollama.image.params', PARAMS),
    layer('application/vnd.ollama.image.system', SYSTEM),
    layer('application/vnd.ollama.image.license', 'MIT'),
  ]
  const config = layer('application/vnd.docker.container.image.v1+json', '{"model_format":"gguf"}')
  const m = (layers: object[]) => ({ schemaVersion: 2, mediaType: MANIFEST_MEDIA_TYPE, config, layers })
  return {
    'library/tiny/1b': m([model, ...extras]),
    'library/tiny/latest': m([model]),
    'someone/tiny/v2': m([model]),
    // the manifest promises other bytes than the blob server has under that digest
    'library/liar/1b': m([{ ...model, digest: `sha256:${LYING_ETAG}` }]),
    // a template blob whose bytes do not hash to its digest
    'library/badtemplate/1b': m([
      model,
      { mediaType: 'application/vnd.ollama.image.template', digest: `sha256:${LYING_ETAG}`, size: 3 },
    ]),
  }
}

function registryHandler(
  req: IncomingMessage,
  res: ServerResponse,
  tiny: Buffer,
  tinySha: string,
  cdn: Server,
) {
  const url = new URL(req.url ?? '/', 'http://registry')
  const manifest = /^\/v2\/([^/]+\/[^/]+)\/manifests\/([^/]+)$/.exec(url.pathname)
  const blob = /^\/v2\/([^/]+\/[^/]+)\/blobs\/(sha256:[0-9a-f]{64})$/.exec(url.pathname)
  const unknown = (code: string) => {
    res.writeHead(404, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ errors: [{ code, message: 'manifest unknown' }] }))
  }
  if (manifest) {
    if (req.headers.accept !== MANIFEST_MEDIA_TYPE) return unknown('MANIFEST_UNKNOWN')
    const body = manifests(tiny, tinySha)[`${manifest[1]}/${manifest[2]}`]
    if (body === undefined) return unknown('MANIFEST_UNKNOWN')
    res.writeHead(200, { 'content-type': MANIFEST_MEDIA_TYPE })
    return res.end(JSON.stringify(body))
  }
  if (blob) {
    const digest = blob[2]!
    // The model blob (and a lying digest) is redirected to the CDN, like the real registry does.
    if (digest === `sha256:${tinySha}` || digest === `sha256:${LYING_ETAG}`) {
      if (manifest === null && url.pathname.includes('badtemplate')) {
        res.writeHead(200, { 'content-length': '3' })
        return res.end('abc')
      }
      res.writeHead(307, { location: cdn.url(`/repos/${tinySha}`) })
      return res.end()
    }
    const bytes = blobs.get(digest)
    if (bytes === undefined) return unknown('BLOB_UNKNOWN')
    res.writeHead(200, { 'content-length': String(bytes.length) })
    return res.end(bytes)
  }
  unknown('NAME_UNKNOWN')
}

export type ModelServers = Awaited<ReturnType<typeof startModelServers>>

/** The Hub, the registry and the CDN behind both, each serving `model` (a GGUF). */
export async function startModelServers(model: Buffer) {
  const modelSha = sha(model)
  const cdn = await serve((req, res) => sendFile(req, res, model))
  const hub: Server = await serve((req, res) => hubHandler(req, res, model, modelSha, hub, cdn))
  const registry = await serve((req, res) => registryHandler(req, res, model, modelSha, cdn))
  return {
    cdn,
    hub,
    registry,
    close() {
      for (const s of [cdn, hub, registry]) s.close()
    },
  }
}
