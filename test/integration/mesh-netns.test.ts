// Three real daemons in three network namespaces this test creates, one of them reachable
// only through a relay:
//
//   C (requester) 11.0.1.2 ── 11.0.1.1  R (relay, mesh.relayServe)  11.0.2.1 ── 11.0.2.2  B (worker)
//
// R has an interface in each subnet and does not forward between them, so C and B have no
// route to each other; B's mesh listener is on its own loopback only, so nobody can dial B
// at all (like a host behind a NAT: it can only dial out). B dials R, reserves a relay
// slot and advertises the /p2p-circuit address; C learns B's capacity record by gossip
// through R and runs a job on B's model over the relayed connection. DCUtR then tries to
// upgrade it to a direct one and cannot: there is no path between C and B.
//
// The addresses are outside the private ranges on purpose, so AutoNAT treats them as
// public and really runs (C dials R's address back; R's address is shared only once
// confirmed). Nothing leaves the namespaces: none has a route beyond its own links.
//
// Needs root and iproute2. Where namespaces cannot be created the test FAILS with the
// reason; SUBSTRATE_TEST_SKIP_NETNS=1 skips it explicitly (never on this project's CI).

import assert from 'node:assert/strict'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import type { PeersResponse } from '../../src/api/types.ts'
import { TINY_ANSWER, writeTinyModel } from '../../src/models/builtin.ts'
import {
  type DaemonProcess,
  eventually,
  runCliProcess,
  startDaemonProcess,
  stopAllDaemons,
} from '../helpers/daemon-process.ts'
import {
  createTopology,
  deleteNamespaces,
  listNamespaces,
  nsCanConnect,
  nsFetch,
  nsName,
  removeStaleNamespaces,
  SKIP_NETNS_ENV,
} from '../helpers/netns.ts'

const MODEL = 'relayed-tiny'
const skip = process.env[SKIP_NETNS_ENV] === '1'
const R = nsName('relay')
const B = nsName('worker')
const C = nsName('requester')

async function api(d: DaemonProcess, path: string, init: { method?: string; body?: string } = {}) {
  const res = await nsFetch(d.netns!, `${d.url}${path}`, init)
  assert.equal(res.status, 200, `${path}: ${res.body}`)
  return JSON.parse(res.body) as unknown
}

const peersOf = async (d: DaemonProcess) => (await api(d, '/substrate/v1/peers')) as PeersResponse

/** The mesh port of a daemon listening on 0.0.0.0 (the same on every interface). */
function meshPort(d: DaemonProcess): string {
  const port = /\/tcp\/(\d+)\//.exec(d.meshAddrs[0] ?? '')?.[1]
  assert.ok(port, `no TCP mesh address in ${d.meshAddrs.join(' ')}`)
  return port
}

describe('daemons in separate network namespaces: a worker reachable only through a relay', {
  skip: skip ? `${SKIP_NETNS_ENV}=1` : false,
}, () => {
  let relay: DaemonProcess
  let worker: DaemonProcess
  let requester: DaemonProcess

  before(async () => {
    await removeStaleNamespaces()
    try {
      await createTopology(
        [R, B, C],
        [
          { a: { ns: R, dev: 'to-c', addr: '11.0.1.1/24' }, b: { ns: C, dev: 'to-r', addr: '11.0.1.2/24' } },
          { a: { ns: R, dev: 'to-b', addr: '11.0.2.1/24' }, b: { ns: B, dev: 'to-r', addr: '11.0.2.2/24' } },
        ],
      )
    } catch (err) {
      await deleteNamespaces([R, B, C])
      throw new Error(
        `cannot create the network namespaces this test needs (${(err as Error).message}). ` +
          `It needs root and iproute2 ("ip netns"); on a machine without them set ${SKIP_NETNS_ENV}=1 to skip it.`,
      )
    }

    relay = await startDaemonProcess(['--mesh-listen', '/ip4/0.0.0.0/tcp/0', '--relay', 'true'], 60_000, {
      netns: R,
    })
    const port = meshPort(relay)
    requester = await startDaemonProcess(
      ['--mesh-listen', '/ip4/0.0.0.0/tcp/0', '--bootstrap', `/ip4/11.0.1.1/tcp/${port}/p2p/${relay.id}`],
      60_000,
      // libp2p's own log of the hole-punching attempts, to show DCUtR ran.
      { netns: C, env: { DEBUG: 'libp2p:dcutr*' } },
    )
    // AutoNAT: the relay asks the requester to dial its public address back, and only then
    // shares it, so the relayed addresses it gives the worker are ones C can use.
    await eventually('AutoNAT to confirm the relay address 11.0.1.1', 30_000, async () => {
      const { reachability } = await peersOf(relay)
      return reachability?.addresses.some((a) => a.addr.startsWith('/ip4/11.0.1.1/') && a.verified)
        ? true
        : undefined
    })
    // The worker's mesh listener stays on its loopback: it can only dial out.
    worker = await startDaemonProcess(['--bootstrap', `/ip4/11.0.2.1/tcp/${port}/p2p/${relay.id}`], 60_000, {
      netns: B,
    })
  })

  after(async () => {
    await stopAllDaemons()
    await deleteNamespaces([R, B, C])
    const left = (await listNamespaces()).filter((n) => [R, B, C].includes(n))
    assert.deepEqual(left, [], 'namespaces left behind')
  })

  test('the topology is what it claims: C and B cannot reach each other, both reach R', async () => {
    const port = Number(meshPort(relay))
    assert.equal(await nsCanConnect(C, '11.0.1.1', port), true, 'C reaches the relay')
    assert.equal(await nsCanConnect(B, '11.0.2.1', port), true, 'B reaches the relay')
    assert.equal(await nsCanConnect(C, '11.0.2.2', port), false, 'C has no route to B')
    assert.equal(await nsCanConnect(B, '11.0.1.2', Number(meshPort(requester))), false, 'B has no route to C')
    for (const a of worker.meshAddrs)
      assert.match(a, /^\/ip4\/127\.0\.0\.1\//, 'B listens on its loopback only')
  })

  test('the worker reserves a slot on the relay and advertises its relayed address', async (t) => {
    const r = await eventually('a relay reservation on the worker', 30_000, async () => {
      const { reachability } = await peersOf(worker)
      return reachability?.relays.includes(relay.id) === true ? reachability : undefined
    })
    assert.equal(r.status, 'relayed')
    const circuit = r.addresses.filter((a) => a.relayed).map((a) => a.addr)
    assert.ok(
      circuit.some((a) => a.startsWith(`/ip4/11.0.1.1/tcp/${meshPort(relay)}/p2p/${relay.id}/p2p-circuit`)),
      circuit.join(' '),
    )
    const serving = (await peersOf(relay)).reachability?.relayServing
    assert.ok(serving !== null && serving !== undefined && serving.reservations >= 1, JSON.stringify(serving))
    t.diagnostic(`relay: ${JSON.stringify((await peersOf(relay)).reachability)}`)
  })

  test('the requester finds the worker’s model by gossip through the relay and runs a job over the relayed connection', async (t) => {
    const file = join(worker.home, `${MODEL}.gguf`)
    await writeTinyModel(file, { contextLength: 2048 })
    await api(worker, '/substrate/v1/models/import', {
      method: 'POST',
      body: JSON.stringify({ path: file, name: MODEL, stream: false }),
    })
    await eventually('the requester to see the worker offer the model', 30_000, async () => {
      const { peers } = await peersOf(requester)
      const w = peers.find((p) => p.id === worker.id)
      return w?.models.some((m) => m.name === `${MODEL}:latest`) === true && w.freeSlots > 0
        ? true
        : undefined
    })

    const started = performance.now()
    const body = (await api(requester, '/api/generate', {
      method: 'POST',
      body: JSON.stringify({ model: MODEL, prompt: 'hi', stream: false }),
    })) as { response: string; substrate?: { worker: string; receipt: { requester: string } } }
    assert.equal(body.response.trim(), TINY_ANSWER)
    assert.equal(body.substrate?.worker, worker.id)
    assert.equal(body.substrate?.receipt.requester, requester.id)
    t.diagnostic(`relayed job answered in ${Math.round(performance.now() - started)} ms`)

    // DCUtR tries to upgrade the relayed connection to a direct one: the requester sends
    // CONNECT with its public address; the worker has no public address to answer with
    // (and no route to the requester), so every attempt fails and the connection stays
    // relayed.
    await eventually('a DCUtR attempt from the requester', 20_000, async () =>
      requester.stderr().includes(`libp2p:dcutr B sending connect to ${worker.id}`) ? true : undefined,
    )
    const { peers } = await peersOf(requester)
    assert.equal(peers.find((p) => p.id === worker.id)?.connection, 'relayed')
  })

  test('substrate peers inside the requester’s namespace shows the worker reached via the relay', async () => {
    const out = await runCliProcess(requester, ['peers'])
    assert.match(out, /^reachable\s+public/m, out)
    const row = out.split('\n').find((l) => l.startsWith(worker.id))
    assert.ok(row, out)
    assert.match(row, /\brelayed\b/)
  })
})
