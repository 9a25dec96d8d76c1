// When every local sequence of a model is busy and a peer has the same model loaded, the
// request goes to the peer instead of waiting in the local queue. Two daemons in this
// process (runners are real processes), joined over loopback.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { TINY_ANSWER } from '../../src/models/builtin.ts'
import { startTestNode, type TestNode } from '../helpers/node.ts'

let peer: TestNode
let busy: TestNode

before(async () => {
  peer = await startTestNode()
  const addr = peer.node.mesh!.node.multiaddrs()[0]!
  busy = await startTestNode({ runtime: { parallel: 1 }, mesh: { bootstrap: [addr] } })
  // The peer loads the model (both hold the same built-in substrate-tiny).
  const load = await fetch(`${peer.url}/api/generate`, {
    method: 'POST',
    body: JSON.stringify({ model: 'substrate-tiny', keep_alive: '5m' }),
  })
  assert.equal(load.status, 200)
  const deadline = Date.now() + 20_000
  const digest = peer.node.models.list().find((m) => m.name === 'substrate-tiny:latest')!.digest
  while (!busy.node.mesh!.findRemoteModel(digest)?.loadedOn.includes(peer.node.identity.id)) {
    if (Date.now() > deadline) throw new Error('the busy node never saw the peer with the model loaded')
    await sleep(50)
  }
})
after(async () => {
  await busy?.close()
  await peer?.close()
})

test('a request that finds every local sequence busy is served by a peer with the model loaded', async (t) => {
  // Occupy the busy node's only sequence with an endless "tick tock".
  const hog = new AbortController()
  const long = await fetch(`${busy.url}/api/generate`, {
    method: 'POST',
    body: JSON.stringify({
      model: 'substrate-tiny',
      prompt: '~',
      raw: true,
      options: { num_predict: 100_000 },
    }),
    signal: hog.signal,
  })
  assert.equal(long.status, 200)
  const reader = long.body!.getReader()
  await reader.read() // the first token: the sequence is in use
  const asked = performance.now()
  try {
    const res = await fetch(`${busy.url}/api/generate`, {
      method: 'POST',
      body: JSON.stringify({ model: 'substrate-tiny', prompt: 'hi', stream: false }),
      signal: AbortSignal.timeout(30_000),
    })
    const body = (await res.json()) as { response: string; substrate?: { worker: string } }
    assert.equal(res.status, 200)
    assert.equal(body.response.trim(), TINY_ANSWER)
    assert.equal(body.substrate?.worker, peer.node.identity.id, 'served by the peer, not queued here')
    t.diagnostic(`answered by the peer in ${Math.round(performance.now() - asked)} ms`)
  } finally {
    hog.abort()
    await reader.cancel().catch(() => {})
  }
})
