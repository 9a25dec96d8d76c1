// The worker's admission queue between real libp2p nodes: when every slot is busy, verified
// jobs wait, are started in the order of their requesters' standing, a share of the slots
// stays reserved for requesters at floor level, and a job that cannot get a slot in time,
// or finds the queue full, is refused with E_WORKER_BUSY.

import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import type { Standing } from '../../src/ledger/priority.ts'
import { silentLogger } from '../../src/logger.ts'
import { createJobProtocol, type JobProtocol, type JobRequest } from '../../src/mesh/job-protocol.ts'
import type { JobWorkerInit, RunJob } from '../../src/mesh/job-worker.ts'
import {
  type FakeJobProbe,
  fakeRunJob,
  MODEL_DIGEST,
  rejectsWith,
  startPeers,
  stopPeers,
  type TestPeer,
  waitFor,
} from './helpers.ts'

const request: JobRequest = {
  model: MODEL_DIGEST,
  mode: 'completion',
  prompt: 'hello',
  options: { temperature: 0 },
  maxTokens: 64,
}

interface Setup {
  peers: TestPeer[]
  worker: JobProtocol
  requesters: JobProtocol[]
  /** Requester ids in the order the worker started their jobs. */
  started: string[]
  workerId: string
}

/**
 * A worker (peers[0]) and `n` requesters. The requester named `hog` runs forever; the rest
 * run four tokens. `balances` gives requesters a ledger standing (index → balance).
 */
async function setup(n: number, init: JobWorkerInit, balances: Record<number, number>): Promise<Setup> {
  const peers = await startPeers(n + 1)
  const ids = peers.map((p) => p.identity.id)
  const started: string[] = []
  const hogs = new Set<string>([ids[1]!])
  const probe: FakeJobProbe = { started: 0, stopped: 0 }
  const runJob: RunJob = (job, signal) => {
    started.push(job.requester)
    return fakeRunJob(probe, hogs.has(job.requester) ? { forever: true, delayMs: 10 } : { delayMs: 5 })(
      job,
      signal,
    )
  }
  const standingOf = (node: string): Standing => ({
    member: node,
    balance: balances[ids.indexOf(node)] ?? 0,
    floorLeftToday: 500,
  })
  const components = (p: TestPeer) => ({
    mesh: p.mesh,
    identity: p.identity,
    logger: silentLogger,
    hasModel: (digest: string) => digest === MODEL_DIGEST,
    runJob,
    standingOf,
  })
  const worker = createJobProtocol(components(peers[0]!), init)
  await worker.start()
  const requesters = peers
    .slice(1)
    .map((p) => createJobProtocol(components(p), { admissionTimeoutMs: 20_000 }))
  return { peers, worker, requesters, started, workerId: ids[0]! }
}

async function teardown(s: Setup | undefined) {
  if (s === undefined) return
  await s.worker.stop()
  await stopPeers(s.peers)
}

describe('the worker admission queue', () => {
  let s: Setup | undefined
  after(() => teardown(s))

  test('waiting jobs start by standing: the requester with credits first, the one with none still served', async () => {
    // requesters: 1 = hog, 2 = zero credits, 3 = 100 credits
    s = await setup(3, { maxConcurrentJobs: 1, queueTimeoutMs: 15_000 }, { 3: 100 })
    const { worker, requesters, workerId, started, peers } = s
    const hog = requesters[0]!.stream(workerId, request)
    await hog.next() // the only slot is taken
    const floor = requesters[1]!.run(workerId, request)
    await waitFor(() => worker.queuedJobs() === 1, 'the zero-credit job to queue', 15_000)
    const rich = requesters[2]!.run(workerId, request)
    await waitFor(() => worker.queuedJobs() === 2, 'the job with credits to queue', 15_000)
    await hog.return(undefined)
    const [a, b] = await Promise.all([rich, floor])
    assert.equal(a.text, 'Hello, mesh!')
    assert.equal(b.text, 'Hello, mesh!')
    assert.deepEqual(started, [peers[1]!.identity.id, peers[3]!.identity.id, peers[2]!.identity.id])
    assert.equal(worker.queuedJobs(), 0)
    await teardown(s)
    s = undefined
  })

  test('with two slots one stays reserved for floor level: a second job with credits waits, a zero-credit one starts', async () => {
    // requesters: 1 = hog with credits, 2 = 50 credits, 3 = zero credits
    s = await setup(3, { maxConcurrentJobs: 2, queueTimeoutMs: 15_000 }, { 1: 200, 2: 50 })
    const { worker, requesters, workerId, started, peers } = s
    const hog = requesters[0]!.stream(workerId, request)
    await hog.next()
    const second = requesters[1]!.run(workerId, request)
    await waitFor(() => worker.queuedJobs() === 1, 'the second job with credits to wait', 15_000)
    assert.equal(worker.activeJobs(), 1, 'a slot is free, but it is the reserved one')
    const floor = await requesters[2]!.run(workerId, request)
    assert.equal(floor.text, 'Hello, mesh!')
    assert.equal(worker.queuedJobs(), 1, 'the job with credits is still waiting')
    await hog.return(undefined)
    assert.equal((await second).text, 'Hello, mesh!')
    assert.deepEqual(started, [peers[1]!.identity.id, peers[3]!.identity.id, peers[2]!.identity.id])
    await teardown(s)
    s = undefined
  })

  test('a full queue refuses at once, and a job that waits too long is refused cleanly', async () => {
    s = await setup(3, { maxConcurrentJobs: 1, maxQueuedJobs: 1, queueTimeoutMs: 2_000 }, {})
    const { worker, requesters, workerId } = s
    const hog = requesters[0]!.stream(workerId, request)
    await hog.next()
    const waiter = requesters[1]!.run(workerId, request)
    await waitFor(() => worker.queuedJobs() === 1, 'one job to wait', 15_000)
    // Refused at once: the message is the full queue's, not the timeout's.
    await assert.rejects(requesters[2]!.run(workerId, request), (err: unknown) => {
      rejectsWith('E_WORKER_BUSY')(err)
      assert.match((err as Error).message, /1 jobs are waiting/)
      return true
    })
    await assert.rejects(waiter, (err: unknown) => {
      rejectsWith('E_WORKER_BUSY')(err)
      assert.match((err as Error).message, /waited 2000 ms in the queue/)
      return true
    })
    assert.equal(worker.queuedJobs(), 0)
    // The hog's job was never disturbed, and the slot frees when it ends.
    const next = await hog.next()
    assert.equal(next.done, false)
    await hog.return(undefined)
    await waitFor(() => worker.activeJobs() === 0, 'the slot to free up', 15_000)
  })
})
