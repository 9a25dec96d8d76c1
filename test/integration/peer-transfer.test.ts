// The peer-transfer acceptance test: three real daemons on loopback. A imports a model; B
// and C pull it from peers only (`peers:NAME` through /api/pull, as `substrate pull
// --from-peers-only` sends it); C gets chunks from both A and B; a fourth process that
// lies (serves corrupt chunks and announces the model in the DHT) is dropped; the files are
// byte-identical; and a model removed on B is no longer served by B.

import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import type { PeersResponse } from '../../src/api/types.ts'
import { writeBenchModel } from '../../src/models/builtin.ts'
import { CHUNK_SIZE } from '../../src/models/chunk-manifest.ts'
import {
  type DaemonProcess,
  eventually,
  startDaemonProcess,
  stopAllDaemons,
} from '../helpers/daemon-process.ts'
import { rejectsWith } from '../mesh/helpers.ts'
import { type Holder, spawnHolder, startPuller, type TestPuller } from '../mesh/transfer-helpers.ts'

const NAME = 'shared-bench'

async function post(d: DaemonProcess, path: string, body: unknown) {
  const res = await fetch(`${d.url}${path}`, { method: 'POST', body: JSON.stringify(body) })
  return { status: res.status, body: (await res.json()) as Record<string, unknown> }
}

async function offeredBy(d: DaemonProcess, name: string): Promise<string[]> {
  const { peers } = (await (await fetch(`${d.url}/substrate/v1/peers`)).json()) as PeersResponse
  return peers.filter((p) => p.models.some((m) => m.name === name)).map((p) => p.id)
}

/** The 'pulled from peers' log line: which peer sent how many chunks, who was dropped. */
function pullLog(d: DaemonProcess): { chunksFrom: Record<string, number>; dropped: Record<string, string> } {
  const line = d
    .stderr()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg?: string })
    .findLast((e) => e.msg === 'pulled from peers')
  assert.ok(line, 'the daemon logged the peer pull')
  return line as unknown as { chunksFrom: Record<string, number>; dropped: Record<string, string> }
}

const blobOf = (d: DaemonProcess, digest: string) =>
  readFile(join(d.home, 'models', 'blobs', `sha256-${digest.slice('sha256:'.length)}`))

describe('three daemons share a model peer to peer', () => {
  let a: DaemonProcess
  let b: DaemonProcess
  let c: DaemonProcess
  let liar: Holder
  let probe: TestPuller | undefined
  let digest: string
  let original: Buffer

  before(async () => {
    a = await startDaemonProcess()
    const file = join(a.home, 'bench.gguf')
    await writeBenchModel(file)
    original = await readFile(file)
    digest = `sha256:${createHash('sha256').update(original).digest('hex')}`
    const imported = await post(a, '/substrate/v1/models/import', { path: file, name: NAME, stream: false })
    assert.equal(imported.status, 200, JSON.stringify(imported.body))
    const bootstrap = ['--bootstrap', a.meshAddrs[0]!]
    ;[b, c] = await Promise.all([startDaemonProcess(bootstrap), startDaemonProcess(bootstrap)])
    // The liar announces the model in the DHT like an honest holder, then corrupts every chunk.
    liar = await spawnHolder({ file, mode: 'corrupt', bootstrap: a.meshAddrs[0]! })
  })
  after(async () => {
    liar?.kill()
    await probe?.stop()
    await stopAllDaemons()
  })

  test('B and C pull from peers only; C gets chunks from A and B; the liar is dropped; files are identical', async (t) => {
    assert.ok(original.length > 4 * CHUNK_SIZE, 'the model spans several chunks')
    await eventually('B sees A offering the model', 30_000, async () =>
      (await offeredBy(b, `${NAME}:latest`)).includes(a.id) ? true : undefined,
    )
    const fromB = await post(b, '/api/pull', { model: `peers:${NAME}`, stream: false })
    assert.equal(fromB.status, 200, JSON.stringify(fromB.body))

    await eventually('C sees A and B offering the model', 30_000, async () => {
      const ids = await offeredBy(c, `${NAME}:latest`)
      return ids.includes(a.id) && ids.includes(b.id) ? true : undefined
    })
    const fromC = await post(c, '/api/pull', { model: `peers:${NAME}`, stream: false })
    assert.equal(fromC.status, 200, JSON.stringify(fromC.body))
    const log = pullLog(c)
    t.diagnostic(
      `C's chunks by peer: ${JSON.stringify(log.chunksFrom)}; dropped: ${JSON.stringify(log.dropped)}`,
    )
    assert.ok((log.chunksFrom[a.id] ?? 0) > 0, 'C got chunks from A')
    assert.ok((log.chunksFrom[b.id] ?? 0) > 0, 'C got chunks from B')
    assert.equal(log.chunksFrom[liar.id], undefined, 'nothing from the liar was kept')
    assert.match(log.dropped[liar.id] ?? '', /does not match/, 'C dropped the liar')

    assert.deepEqual(await blobOf(b, digest), original)
    assert.deepEqual(await blobOf(c, digest), original)
    const tags = (await (await fetch(`${c.url}/api/tags`)).json()) as {
      models: Array<{ name: string; digest: string }>
    }
    const pulled = tags.models.find((m) => m.name === `${NAME}:latest` && !('remote' in m))
    assert.equal(pulled?.digest, digest.slice('sha256:'.length))
  })

  test('after `rm` on B, B stops serving the model and stops offering it', async () => {
    const res = await fetch(`${b.url}/api/delete`, {
      method: 'DELETE',
      body: JSON.stringify({ model: NAME }),
    })
    assert.equal(res.status, 200)
    await eventually('C no longer sees B offering the model', 30_000, async () =>
      (await offeredBy(c, `${NAME}:latest`)).includes(b.id) ? undefined : true,
    )
    probe = await startPuller(join(a.home, 'probe'), [{ id: b.id, addr: b.meshAddrs[0]! } as Holder])
    await assert.rejects(probe.pull(digest), rejectsWith('E_MODEL_NOT_FOUND'))
  })
})
