// Pulls from Hugging Face and the Ollama library, each against a local server that speaks
// the protocol as documented (the Hub's tree + resolve API, the registry's manifest +
// blob API), with the model bytes behind a redirect to a separate "CDN" origin.

import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { SubstrateError } from '../../src/errors.ts'
import { writeTinyModel } from '../../src/models/builtin.ts'
import { carriesQuant, createHuggingFaceSource, parseHfRef } from '../../src/models/sources/huggingface.ts'
import { createOllamaSource, parseOllamaRef } from '../../src/models/sources/ollama.ts'
import { createUrlSource } from '../../src/models/sources/url.ts'
import type { ModelStoreInit } from '../../src/models/store.ts'
import type { ProgressEvent } from '../../src/models/types.ts'
import { openTestStore, sendFile, serve } from '../helpers/http-server.ts'
import {
  HF_FILES,
  type ModelServers,
  PARAMS,
  SYSTEM,
  startModelServers,
  TEMPLATE,
} from '../helpers/model-servers.ts'

const root = mkdtempSync(join(tmpdir(), 'substrate-sources-'))
let tiny: Buffer
let tinySha: string
const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex')

let servers: ModelServers
let cdn: ModelServers['cdn']
let hub: ModelServers['hub']
let registry: ModelServers['registry']

const code = (expected: string, message?: RegExp) => (err: unknown) => {
  assert.ok(err instanceof SubstrateError, `expected a SubstrateError, got ${String(err)}`)
  assert.equal(err.code, expected, err.message)
  if (message) assert.match(err.message, message)
  return true
}

before(async () => {
  await writeTinyModel(join(root, 'tiny.gguf'))
  tiny = readFileSync(join(root, 'tiny.gguf'))
  tinySha = sha(tiny)
  servers = await startModelServers(tiny)
  ;({ cdn, hub, registry } = servers)
})
after(() => {
  servers.close()
  rmSync(root, { recursive: true, force: true })
})

function storeWith(init: Partial<ModelStoreInit> = {}, token?: string) {
  const sources = [
    createHuggingFaceSource({ endpoint: hub.url('/'), ...(token === undefined ? {} : { token }) }),
    createOllamaSource({ registry: registry.url('') }),
    createUrlSource(),
  ]
  return openTestStore(root, { sources, ...init })
}

/** Requests each server saw during `fn`. */
async function counting<T>(fn: () => Promise<T>) {
  const before = { cdn: cdn.seen.length, hub: hub.seen.length, registry: registry.seen.length }
  const result = await fn().then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  )
  return {
    ...result,
    cdn: cdn.seen.slice(before.cdn),
    hub: hub.seen.slice(before.hub),
    registry: registry.seen.slice(before.registry),
  }
}

describe('Hugging Face references', () => {
  test('parse into repo, revision, file or quantisation', () => {
    assert.deepEqual(parseHfRef('hf:org/Repo-GGUF/sub/m-Q4_K_M.gguf'), {
      repo: 'org/Repo-GGUF',
      revision: 'main',
      file: 'sub/m-Q4_K_M.gguf',
    })
    assert.deepEqual(parseHfRef('hf:org/Repo@v1.0:q8_0'), {
      repo: 'org/Repo',
      revision: 'v1.0',
      quant: 'q8_0',
    })
    for (const bad of [
      'hf:org',
      'hf:org/repo/readme.md',
      'hf:org/repo/../x.gguf',
      'hf:org/re po:Q4',
      'hf:org/repo:Q4-K',
    ])
      assert.throws(() => parseHfRef(bad), code('E_INVALID_ARGUMENT'), bad)
    assert.ok(carriesQuant('x/model.Q4_K_M.gguf', 'q4_k_m'))
    assert.ok(!carriesQuant('model-IQ4_K_M.gguf', 'Q4_K_M'))
    assert.ok(!carriesQuant('model-Q4_K_M_L.gguf', 'Q4_K_M'))
  })

  test('hf:REPO:QUANT lists the repo (paged), reads the LFS sha256 by HEAD and fetches from the CDN', async () => {
    const { store, tmp, close } = await storeWith()
    const events: ProgressEvent[] = []
    const run = await counting(() =>
      store.pull('hf:org/Tiny-GGUF:Q4_K_M', { onProgress: (e) => events.push(e) }),
    )
    assert.ok('value' in run, String((run as { error?: unknown }).error))
    const record = run.value
    assert.equal(record.name, 'tiny:q4_k_m')
    assert.equal(record.digest, `sha256:${tinySha}`)
    assert.equal(record.source, 'hf:org/Tiny-GGUF/tiny-Q4_K_M.gguf')
    assert.deepEqual(readFileSync(record.path), tiny)
    // every page of the listing was read, then HEAD, then GET of the same resolve URL
    const listings = run.hub.filter((r) => r.path.includes('/tree/'))
    assert.equal(listings.length, Math.ceil(HF_FILES.length / 2))
    assert.deepEqual(
      run.hub.filter((r) => r.path.includes('/resolve/')).map((r) => r.method),
      ['HEAD', 'GET'],
    )
    assert.equal(run.cdn.length, 1)
    const statuses = events.map((e) => e.status)
    assert.equal(statuses[0], 'pulling manifest')
    assert.ok(statuses.includes(`pulling ${tinySha.slice(0, 12)}`))
    assert.deepEqual(statuses.slice(-3), ['verifying sha256 digest', 'verifying model file', 'success'])
    assert.deepEqual(tmp(), [])
    await close()
  })

  test('hf:REPO/FILE asks for no listing; HF_TOKEN reaches the Hub but not the CDN', async () => {
    const { store, close } = await storeWith({}, 'hf_secret')
    const run = await counting(() => store.pull('hf:org/Private-GGUF/private-Q4_K_M.gguf', { name: 'p' }))
    assert.ok('value' in run, String((run as { error?: unknown }).error))
    assert.equal(run.value.name, 'p:latest')
    assert.ok(run.hub.every((r) => !r.path.includes('/tree/')))
    assert.ok(run.hub.every((r) => r.authorization === 'Bearer hf_secret'))
    assert.ok(run.cdn.length > 0 && run.cdn.every((r) => r.authorization === undefined))
    await close()
    const anonymous = await storeWith()
    await assert.rejects(
      anonymous.store.pull('hf:org/Private-GGUF:Q4_K_M', {}),
      code('E_UNAUTHORIZED', /refused/),
    )
    await anonymous.close()
  })

  test('a quantisation that is ambiguous or absent is a clear error listing the candidates', async () => {
    const { store, close } = await storeWith()
    const run = await counting(async () => {
      await assert.rejects(
        store.pull('hf:org/Tiny-GGUF:Q4_K_S', {}),
        (err) =>
          code('E_INVALID_ARGUMENT', /hf:org\/Tiny-GGUF:Q4_K_S|org\/Tiny-GGUF:Q4_K_S is ambiguous: 2/)(err) &&
          /tiny-Q4_K_S-00001-of-00002\.gguf/.test((err as SubstrateError).hint ?? ''),
      )
      await assert.rejects(
        store.pull('hf:org/Tiny-GGUF:Q3_K_L', {}),
        (err) =>
          code('E_MODEL_NOT_FOUND', /no GGUF file for Q3_K_L/)(err) &&
          /tiny-Q8_0\.gguf/.test((err as SubstrateError).hint ?? ''),
      )
      await assert.rejects(store.pull('hf:org/Tiny-GGUF', {}), code('E_INVALID_ARGUMENT', /ambiguous: 6/))
    })
    assert.equal(run.cdn.length, 0, 'nothing was downloaded')
    await close()
  })

  test('a repo, file or revision that does not exist is E_MODEL_NOT_FOUND naming it', async () => {
    const { store, close } = await storeWith()
    await assert.rejects(
      store.pull('hf:org/Nope-GGUF:Q4_K_M', {}),
      code('E_MODEL_NOT_FOUND', /Hugging Face has no repository org\/Nope-GGUF/),
    )
    await assert.rejects(
      store.pull('hf:org/Tiny-GGUF/missing-Q4_K_M.gguf', {}),
      code('E_MODEL_NOT_FOUND', /Hugging Face has no missing-Q4_K_M\.gguf in org\/Tiny-GGUF@main/),
    )
    await assert.rejects(
      store.pull('hf:org/Tiny-GGUF@v9:Q4_K_M', {}),
      code('E_MODEL_NOT_FOUND', /revision "v9" of org\/Tiny-GGUF/),
    )
    assert.deepEqual(store.list(), [])
    await close()
  })

  test('bytes that do not match the X-Linked-Etag sha256 are refused and nothing is kept', async () => {
    const { store, tmp, close } = await storeWith()
    await assert.rejects(
      store.pull('hf:org/Tiny-GGUF/tiny-Q5_0.gguf', {}),
      code('E_CHECKSUM_MISMATCH', /expected f{64}/),
    )
    assert.deepEqual(store.list(), [])
    assert.deepEqual(tmp(), [])
    await close()
  })

  test('an unreachable Hub is E_DOWNLOAD_FAILED naming it', async () => {
    const down = await serve(() => {})
    const endpoint = down.url('/')
    down.close()
    const { store, close } = await openTestStore(root, { sources: [createHuggingFaceSource({ endpoint })] })
    await assert.rejects(
      store.pull('hf:org/Tiny-GGUF:Q4_K_M', {}),
      code('E_DOWNLOAD_FAILED', /cannot reach Hugging Face/),
    )
    await close()
  })
})

describe('Ollama library references', () => {
  test('parse with library and latest as defaults', () => {
    assert.deepEqual(parseOllamaRef('ollama:llama3.2:1b'), {
      namespace: 'library',
      name: 'llama3.2',
      tag: '1b',
    })
    assert.deepEqual(parseOllamaRef('ollama:llama3.2'), {
      namespace: 'library',
      name: 'llama3.2',
      tag: 'latest',
    })
    assert.deepEqual(parseOllamaRef('ollama:someone/x:v2'), { namespace: 'someone', name: 'x', tag: 'v2' })
    for (const bad of ['ollama:', 'ollama:a/b/c', 'ollama:UP', 'ollama:x:a b'])
      assert.throws(() => parseOllamaRef(bad), code('E_INVALID_ARGUMENT'), bad)
  })

  test('ollama:NAME:TAG takes the GGUF layer by digest and keeps template, params and system', async () => {
    const { store, tmp, close } = await storeWith()
    const events: ProgressEvent[] = []
    const run = await counting(() => store.pull('ollama:tiny:1b', { onProgress: (e) => events.push(e) }))
    assert.ok('value' in run, String((run as { error?: unknown }).error))
    const record = run.value
    assert.equal(record.name, 'tiny:1b')
    assert.equal(record.digest, `sha256:${tinySha}`)
    assert.equal(record.source, 'ollama:tiny:1b')
    assert.deepEqual(record.extras, {
      template: TEMPLATE,
      params: JSON.parse(PARAMS),
      system: SYSTEM,
      license: 'MIT',
    })
    assert.deepEqual(readFileSync(record.path), tiny)
    assert.equal(run.registry[0]?.path, '/v2/library/tiny/manifests/1b')
    assert.ok(run.registry.some((r) => r.path === `/v2/library/tiny/blobs/sha256:${tinySha}`))
    assert.equal(run.cdn.length, 1, 'the model blob followed the redirect')
    // Ollama's status lines, with total and completed for the model blob
    assert.equal(events[0]?.status, 'pulling manifest')
    const model = events.filter((e) => e.digest === `sha256:${tinySha}` && e.status.startsWith('pulling '))
    assert.equal(model.at(-1)?.completed, tiny.length)
    assert.equal(model.at(-1)?.total, tiny.length)
    assert.deepEqual(
      events.slice(-3).map((e) => e.status),
      ['verifying sha256 digest', 'verifying model file', 'success'],
    )
    assert.deepEqual(tmp(), [])
    // the extras survive a restart of the store: they are stored with the model
    assert.deepEqual((await store.resolve('tiny:1b')).extras?.system, SYSTEM)
    await close()
  })

  test('the tag defaults to latest and a namespace other than library can be named', async () => {
    const { store, close } = await storeWith()
    const run = await counting(async () => {
      assert.equal((await store.pull('ollama:tiny', {})).name, 'tiny:latest')
      assert.equal((await store.pull('ollama:someone/tiny:v2', {})).name, 'someone/tiny:v2')
    })
    assert.ok(!('error' in run), String((run as { error?: unknown }).error))
    assert.deepEqual(
      run.registry.filter((r) => r.path.includes('/manifests/')).map((r) => r.path),
      ['/v2/library/tiny/manifests/latest', '/v2/someone/tiny/manifests/v2'],
    )
    assert.equal(run.cdn.length, 1, 'the second pull found the bytes already stored')
    await close()
  })

  test('a name or tag the registry does not have is E_MODEL_NOT_FOUND naming source and name', async () => {
    const { store, close } = await storeWith()
    await assert.rejects(
      store.pull('ollama:nope:7b', {}),
      code('E_MODEL_NOT_FOUND', /Ollama library has no nope:7b/),
    )
    await assert.rejects(
      store.pull('ollama:tiny:70b', {}),
      code('E_MODEL_NOT_FOUND', /Ollama library has no tiny:70b/),
    )
    await close()
  })

  test('a blob whose bytes do not match its digest is E_CHECKSUM_MISMATCH and nothing is kept', async () => {
    const { store, tmp, close } = await storeWith()
    await assert.rejects(store.pull('ollama:liar:1b', {}), code('E_CHECKSUM_MISMATCH'))
    const run = await counting(() => store.pull('ollama:badtemplate:1b', {}))
    assert.ok('error' in run && code('E_CHECKSUM_MISMATCH', /template|sha256:f{64}/)(run.error))
    assert.equal(run.cdn.length, 0, 'a bad small layer stops the pull before the model download')
    assert.deepEqual(store.list(), [])
    assert.deepEqual(tmp(), [])
    await close()
  })
})

describe('policy and quota', () => {
  test('a denied reference is refused before any request; deny wins over allow', async () => {
    const { store, close } = await storeWith({
      policy: { allow: ['*'], deny: ['ollama:tiny*', 'hf:org/Tiny-GGUF*'] },
    })
    const run = await counting(async () => {
      await assert.rejects(
        store.pull('ollama:tiny:1b', {}),
        code('E_POLICY_DENIED', /deny rule "ollama:tiny\*"/),
      )
      await assert.rejects(store.pull('hf:org/Tiny-GGUF:Q4_K_M', {}), code('E_POLICY_DENIED'))
    })
    assert.equal(run.registry.length + run.hub.length + run.cdn.length, 0)
    await close()
  })

  test('an allow list admits what it matches after resolution and refuses the rest before the download', async () => {
    const { store, close } = await storeWith({ policy: { allow: ['ollama:tiny:latest'] } })
    assert.equal((await store.pull('ollama:tiny', {})).source, 'ollama:tiny:latest')
    const run = await counting(() => store.pull('ollama:someone/tiny:v2', { name: 'other' }))
    assert.ok('error' in run && code('E_POLICY_DENIED', /matches no models.allow rule/)(run.error))
    assert.equal(run.cdn.length, 0)
    await assert.rejects(
      store.importFile(join(root, 'tiny.gguf'), { name: 'imported' }),
      code('E_POLICY_DENIED'),
    )
    await close()
  })

  test('a digest rule refuses content at commit even when the URL gave no hint, leaving nothing', async () => {
    const { store, tmp, close } = await storeWith({ policy: { deny: [`sha256:${tinySha}`] } })
    await assert.rejects(store.pull(cdn.url('/tiny.gguf'), {}), code('E_POLICY_DENIED', /sha256:/))
    assert.deepEqual(store.list(), [])
    assert.deepEqual(tmp(), [])
    await close()
  })

  test('the quota refuses a pull before downloading, and a URL of unknown size before writing', async () => {
    const { store, tmp, close } = await storeWith({ policy: { quotaBytes: tiny.length + 100 } })
    await store.importFile(join(root, 'tiny.gguf'), { name: 'first' })
    // The same bytes again need no room: they are stored once.
    assert.equal((await store.pull('ollama:tiny:1b', {})).digest, `sha256:${tinySha}`)
    const other = Buffer.alloc(tiny.length, 7)
    const server = await serve((req, res) => sendFile(req, res, other))
    await assert.rejects(store.pull(server.url('/other.gguf'), {}), code('E_QUOTA_EXCEEDED', /quota/))
    // A plain URL publishes no size: the refusal came with the response headers, before the body.
    assert.equal(server.seen.length, 1)
    assert.deepEqual(tmp(), [], 'nothing was written')
    server.close()
    await close()
    const small = await storeWith({ policy: { quotaBytes: tiny.length - 1 } })
    const refused = await counting(() => small.store.pull('hf:org/Tiny-GGUF:Q4_K_M', {}))
    assert.ok('error' in refused && code('E_QUOTA_EXCEEDED')(refused.error))
    assert.equal(refused.cdn.length, 0, 'the published size was enough to refuse')
    await assert.rejects(
      small.store.importFile(join(root, 'tiny.gguf'), { name: 'x' }),
      code('E_QUOTA_EXCEEDED'),
    )
    await small.close()
  })
})
