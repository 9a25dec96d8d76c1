import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { peerIdFromString } from '@libp2p/peer-id'
import { silentLogger } from '../../src/logger.ts'
import {
  createJobProtocol,
  type JobOutcome,
  type JobProtocol,
  type JobRequest,
  type MeshJobEvent,
  verifyCountersignedReceipt,
} from '../../src/mesh/job-protocol.ts'
import { sha256Digest } from '../../src/mesh/job-records.ts'
import {
  type FakeJobProbe,
  fakeRunJob,
  MODEL_DIGEST,
  OTHER_DIGEST,
  rejectsWith,
  startPeers,
  stopPeers,
  type TestPeer,
  waitFor,
} from './helpers.ts'

const request = (over: Partial<JobRequest> = {}): JobRequest => ({
  model: MODEL_DIGEST,
  mode: 'completion',
  prompt: 'Say hello to the mesh',
  options: { temperature: 0 },
  maxTokens: 64,
  ...over,
})

describe('job protocol between two real nodes', () => {
  let peers: TestPeer[] = []
  let worker: JobProtocol
  let requester: JobProtocol
  let workerId: string
  const probe: FakeJobProbe = { started: 0, stopped: 0 }
  let mode: { forever?: boolean; stall?: boolean; delayMs?: number } = {}
  const outcomes: JobOutcome[] = []

  before(async () => {
    peers = await startPeers(2)
    const [w, r] = [peers[0]!, peers[1]!]
    workerId = w.identity.id
    const components = (p: TestPeer) => ({
      mesh: p.mesh,
      identity: p.identity,
      logger: silentLogger,
      hasModel: (digest: string) => digest === MODEL_DIGEST,
      // The mode is read per job so each test can pick the fake's behaviour.
      runJob: (job: Parameters<ReturnType<typeof fakeRunJob>>[0], signal: AbortSignal) =>
        fakeRunJob(probe, mode)(job, signal),
    })
    worker = createJobProtocol(components(w), {
      maxConcurrentJobs: 1,
      countersignTimeoutMs: 2_000,
      queueTimeoutMs: 500,
    })
    requester = createJobProtocol(components(r), {
      stallTimeoutMs: 1_000,
      firstTokenTimeoutMs: 1_000,
      admissionTimeoutMs: 2_000,
    })
    await worker.start()
    await requester.start()
    worker.onJobEnd((o) => outcomes.push(o))
  })
  after(async () => {
    await worker.stop()
    await requester.stop()
    await stopPeers(peers)
  })

  test('a job streams its tokens and both sides end with the same doubly signed receipt', async () => {
    mode = {}
    const tokens: string[] = []
    let done: Extract<MeshJobEvent, { type: 'done' }> | undefined
    for await (const ev of requester.stream(workerId, request())) {
      if (ev.type === 'token') tokens.push(ev.text)
      else done = ev
    }
    // Tokens may share a frame when they come faster than the stream takes them.
    assert.equal(tokens.join(''), 'Hello, mesh!')
    assert.ok(done, 'the stream ends with a done event')
    const { receipt } = done
    assert.equal(receipt.worker, workerId)
    assert.equal(receipt.requester, peers[1]!.identity.id)
    assert.equal(receipt.receipt.outputHash, sha256Digest('Hello, mesh!'))
    assert.equal(receipt.receipt.outputTokens, 4)
    assert.equal(receipt.receipt.model, MODEL_DIGEST)
    assert.equal(receipt.receipt.job, done.job)
    // Anyone can re-verify it from its bytes alone.
    assert.deepEqual(verifyCountersignedReceipt(receipt.bytes).receipt, receipt.receipt)

    await waitFor(() => outcomes.some((o) => o.job.cid === done?.job), 'the worker to record the job')
    const outcome = outcomes.find((o) => o.job.cid === done?.job)!
    assert.equal(outcome.status, 'completed')
    assert.deepEqual(outcome.receipt?.bytes, receipt.bytes)
    assert.equal(worker.activeJobs(), 0)
  })

  test('run() returns the text, the receipt and the time to first token', async () => {
    mode = {}
    const result = await requester.run(workerId, request())
    assert.equal(result.text, 'Hello, mesh!')
    assert.equal(result.worker, workerId)
    assert.ok(result.firstTokenMs !== undefined && result.firstTokenMs < result.totalMs)
  })

  test('a model the worker does not hold is refused with a typed error', async () => {
    await assert.rejects(
      requester.run(workerId, request({ model: OTHER_DIGEST })),
      rejectsWith('E_MODEL_NOT_FOUND'),
    )
  })

  test('a worker whose slot stays busy past the queue timeout refuses with E_WORKER_BUSY', async () => {
    mode = { forever: true, delayMs: 20 }
    const first = requester.stream(workerId, request())
    await first.next() // the first token: the only slot is taken
    const asked = performance.now()
    await assert.rejects(requester.run(workerId, request()), (err: unknown) => {
      rejectsWith('E_WORKER_BUSY')(err)
      assert.match((err as Error).message, /waited 500 ms in the queue/)
      return true
    })
    assert.ok(performance.now() - asked >= 450, 'it waited in the queue first')
    await first.return(undefined)
    await waitFor(() => worker.activeJobs() === 0, 'the slot to free up')
  })

  test('two manifests at once for one slot: one runs, the other waits in the queue and runs next', async () => {
    mode = { delayMs: 20 }
    const started = probe.started
    const results = await Promise.all([
      requester.run(workerId, request()),
      requester.run(workerId, request()),
    ])
    assert.deepEqual(
      results.map((r) => r.text),
      ['Hello, mesh!', 'Hello, mesh!'],
    )
    assert.equal(probe.started - started, 2)
    // One slot: the second job's first token came after the first job's last.
    const [a, b] = results.map((r) => r.firstTokenMs!) as [number, number]
    assert.ok(Math.max(a, b) >= 60, `one of them waited for the slot (${a} ms, ${b} ms)`)
    assert.equal(worker.activeJobs(), 0)
    assert.equal(worker.queuedJobs(), 0)
  })

  test('a requester that stops reading mid-stream stops the worker generating', async () => {
    mode = { forever: true, delayMs: 5 }
    const stoppedBefore = probe.stopped
    let n = 0
    for await (const ev of requester.stream(workerId, request())) {
      if (ev.type === 'token' && ++n === 3) break
    }
    await waitFor(() => probe.stopped > stoppedBefore, "the worker's generator to stop", 3_000)
    assert.equal(probe.lastSignal?.aborted, true)
    await waitFor(() => outcomes.at(-1)?.status === 'cancelled', 'the job to end as cancelled', 3_000)
  })

  test('aborting the signal cancels the job on both sides', async () => {
    mode = { forever: true, delayMs: 5 }
    const stoppedBefore = probe.stopped
    const ac = new AbortController()
    let n = 0
    await assert.rejects(
      (async () => {
        for await (const ev of requester.stream(workerId, request(), { signal: ac.signal })) {
          if (ev.type === 'token' && ++n === 2) ac.abort()
        }
      })(),
      rejectsWith('E_CANCELLED'),
    )
    await waitFor(() => probe.stopped > stoppedBefore, "the worker's generator to stop", 3_000)
  })

  test('a worker whose connection dies mid-stream is a typed error, not a hang', async () => {
    mode = { forever: true, delayMs: 5 }
    let n = 0
    const started = Date.now()
    await assert.rejects(
      (async () => {
        for await (const ev of requester.stream(workerId, request())) {
          if (ev.type === 'token' && ++n === 3) {
            for (const c of peers[0]!.mesh.libp2p.getConnections(peerIdFromString(peers[1]!.identity.id))) {
              c.abort(new Error('killed by the test'))
            }
          }
        }
      })(),
      rejectsWith('E_PEER_GONE'),
    )
    assert.ok(Date.now() - started < 2_000)
    await waitFor(() => worker.activeJobs() === 0, 'the worker to drop the job', 3_000)
    const workerPeer = peerIdFromString(workerId)
    await waitFor(
      () => peers[1]!.mesh.libp2p.getConnections(workerPeer).length === 0,
      'the requester to notice the dead connection',
      3_000,
    )
    await peers[1]!.mesh.dial(peers[0]!.mesh.multiaddrs()[0]!, 5_000)
  })

  test('a worker that stalls is a timeout on the requester, and its job is cancelled', async () => {
    mode = { stall: true }
    const stoppedBefore = probe.stopped
    const started = Date.now()
    await assert.rejects(requester.run(workerId, request()), rejectsWith('E_PEER_TIMEOUT'))
    const waited = Date.now() - started
    assert.ok(waited >= 900 && waited < 3_000, `timed out after ${waited} ms`)
    await waitFor(() => probe.stopped > stoppedBefore, "the stalled worker's job to be cancelled", 3_000)
  })

  test('a worker that shuts down mid-job tells the requester: E_CANCELLED', async () => {
    mode = { forever: true, delayMs: 5 }
    let n = 0
    await assert.rejects(
      (async () => {
        for await (const ev of requester.stream(workerId, request())) {
          if (ev.type === 'token' && ++n === 2) await worker.stop()
        }
      })(),
      (err: unknown) => {
        rejectsWith('E_CANCELLED')(err)
        assert.match(String((err as Error).message), /worker is stopping/)
        return true
      },
    )
    await worker.start()
  })

  test('a runtime failure on the worker reaches the requester as an error frame', async () => {
    mode = {}
    const failing = createJobProtocol(
      {
        mesh: peers[0]!.mesh,
        identity: peers[0]!.identity,
        logger: silentLogger,
        hasModel: () => true,
        // biome-ignore lint/correctness/useYield: fails before its first token on purpose
        runJob: async function* () {
          throw new Error('runner crashed')
        },
      },
      {},
    )
    await worker.stop()
    await failing.start()
    try {
      await assert.rejects(requester.run(workerId, request()), rejectsWith('E_INTERNAL'))
    } finally {
      await failing.stop()
      await worker.start()
    }
  })
})
