// Bad input at admission: each hostile or broken manifest gets a typed refusal frame, and a
// broken worker gets a typed error on the requester. Frames are written by hand here, since
// the requester's own API refuses to build most of them.

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, describe, test } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { peerIdFromString } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import { cidOf, encodeEnvelope, signEnvelope } from '../../src/identity/envelope.ts'
import { generateIdentity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import {
  frameChannel,
  JOB_PROTOCOL,
  MAX_WORKER_FRAME_BYTES,
  type RequesterFrame,
  requesterFrameSchema,
  type WorkerFrame,
  workerFrameSchema,
} from '../../src/mesh/job-codec.ts'
import { createJobProtocol, type JobProtocol } from '../../src/mesh/job-protocol.ts'
import { signManifest, signReceipt } from '../../src/mesh/job-records.ts'
import { recordTypes } from '../../src/protocol/domains.ts'
import {
  type FakeJobProbe,
  fakeRunJob,
  MODEL_DIGEST,
  rejectsWith,
  startPeers,
  stopPeers,
  type TestPeer,
} from './helpers.ts'

const manifestFields = {
  kind: 'infer' as const,
  model: MODEL_DIGEST,
  mode: 'completion' as const,
  prompt: 'hi',
  options: {},
  maxTokens: 8,
}

describe('job admission refuses bad manifests with typed errors', () => {
  let peers: TestPeer[] = []
  let worker: JobProtocol
  let requester: JobProtocol
  const probe: FakeJobProbe = { started: 0, stopped: 0 }

  before(async () => {
    // peers[0] is the worker, peers[1] the requester, peers[2] a rogue worker.
    peers = await startPeers(3)
    const components = (p: TestPeer) => ({
      mesh: p.mesh,
      identity: p.identity,
      logger: silentLogger,
      hasModel: (digest: string) => digest === MODEL_DIGEST,
      runJob: fakeRunJob(probe),
    })
    // Long enough that a loaded machine delivers a manifest in time, short for the test that sends none.
    worker = createJobProtocol(components(peers[0]!), { manifestTimeoutMs: 1_500 })
    requester = createJobProtocol(components(peers[1]!), {
      admissionTimeoutMs: 2_000,
      stallTimeoutMs: 2_000,
      firstTokenTimeoutMs: 2_000,
    })
    await worker.start()
    await requester.start()
    await peers[1]!.mesh.dial(peers[2]!.mesh.multiaddrs()[0]!, 5_000)
  })
  after(async () => {
    await worker.stop()
    await requester.stop()
    await stopPeers(peers)
  })

  const requesterIdentity = () => peers[1]!.identity

  /** Opens a job stream from the requester, writes `body` as one frame, returns the first answer. */
  async function answerTo(body: Uint8Array | undefined): Promise<WorkerFrame> {
    const stream = await peers[1]!.mesh.libp2p.dialProtocol(
      peerIdFromString(peers[0]!.identity.id),
      JOB_PROTOCOL,
    )
    const ch = frameChannel<WorkerFrame, RequesterFrame>(stream, workerFrameSchema, MAX_WORKER_FRAME_BYTES)
    // Not awaited: the worker may reset the stream before a huge frame is fully written.
    if (body !== undefined)
      lpStream(stream)
        .write(body)
        .catch(() => {})
    try {
      return await ch.read({ timeoutMs: 3_000 })
    } finally {
      ch.reset('test done')
    }
  }
  const manifestFrame = (manifest: Uint8Array) => dagCbor.encode({ t: 'manifest', manifest })

  async function refusal(body: Uint8Array | undefined): Promise<string> {
    const frame = await answerTo(body)
    assert.equal(frame.t, 'refuse', `expected a refusal, got ${JSON.stringify(frame)}`)
    return frame.t === 'refuse' ? frame.code : ''
  }

  test('a well-formed manifest is admitted', async () => {
    const { bytes, cid } = signManifest(requesterIdentity(), manifestFields)
    const frame = await answerTo(manifestFrame(bytes))
    assert.deepEqual(frame, { t: 'accept', job: cid })
  })

  test('a forged signature: E_SIGNATURE_INVALID', async () => {
    const { bytes } = signManifest(requesterIdentity(), manifestFields)
    const env = dagCbor.decode(bytes) as { sig: Uint8Array }
    env.sig[0]! ^= 0xff
    assert.equal(await refusal(manifestFrame(dagCbor.encode(env))), 'E_SIGNATURE_INVALID')
  })

  test('a manifest signed by another key than the requester it claims: E_SIGNATURE_INVALID', async () => {
    const mallory = generateIdentity()
    const payload = { ...manifestFields, requester: requesterIdentity().id }
    const bytes = encodeEnvelope(signEnvelope(mallory, 'job', payload))
    assert.equal(await refusal(manifestFrame(bytes)), 'E_SIGNATURE_INVALID')
  })

  test("someone else's valid manifest sent over our stream: E_SIGNATURE_INVALID", async () => {
    const { bytes } = signManifest(generateIdentity(), manifestFields)
    assert.equal(await refusal(manifestFrame(bytes)), 'E_SIGNATURE_INVALID')
  })

  test('a replayed manifest: E_REPLAY', async () => {
    const { bytes } = signManifest(requesterIdentity(), manifestFields)
    assert.equal((await answerTo(manifestFrame(bytes))).t, 'accept')
    assert.equal(await refusal(manifestFrame(bytes)), 'E_REPLAY')
  })

  test('an expired manifest: E_RECORD_EXPIRED', async () => {
    const now = Date.now() - 2 * 3_600_000
    const { bytes } = signManifest(requesterIdentity(), manifestFields, { now, ttlMs: 600_000 })
    assert.equal(await refusal(manifestFrame(bytes)), 'E_RECORD_EXPIRED')
  })

  test('a future-dated manifest: E_RECORD_FUTURE', async () => {
    const { bytes } = signManifest(requesterIdentity(), manifestFields, { now: Date.now() + 600_000 })
    assert.equal(await refusal(manifestFrame(bytes)), 'E_RECORD_FUTURE')
  })

  test('a manifest over the job size limit: E_RECORD_TOO_LARGE', async () => {
    const tooBig = randomBytes(recordTypes.job.maxBytes + 1)
    assert.equal(await refusal(manifestFrame(tooBig)), 'E_RECORD_TOO_LARGE')
  })

  test('a frame over the hard frame limit: E_RECORD_TOO_LARGE before it is buffered', async () => {
    assert.equal(await refusal(randomBytes(3 * recordTypes.job.maxBytes)), 'E_RECORD_TOO_LARGE')
  })

  test('an unknown job kind: E_UNKNOWN_JOB_KIND', async () => {
    const payload = { ...manifestFields, kind: 'train', requester: requesterIdentity().id }
    const bytes = encodeEnvelope(signEnvelope(requesterIdentity(), 'job', payload))
    assert.equal(await refusal(manifestFrame(bytes)), 'E_UNKNOWN_JOB_KIND')
  })

  test('a manifest with a malformed payload: E_BAD_REQUEST', async () => {
    const payload = { ...manifestFields, maxTokens: -1, requester: requesterIdentity().id }
    const bytes = encodeEnvelope(signEnvelope(requesterIdentity(), 'job', payload))
    assert.equal(await refusal(manifestFrame(bytes)), 'E_BAD_REQUEST')
  })

  test('a frame that is not DAG-CBOR, or not a manifest: E_PROTOCOL', async () => {
    assert.equal(await refusal(Uint8Array.of(0xff, 0x00, 0x13, 0x37)), 'E_PROTOCOL')
    assert.equal(await refusal(dagCbor.encode({ t: 'token', text: 'hi' })), 'E_PROTOCOL')
    assert.equal(await refusal(dagCbor.encode({ t: 'cancel' })), 'E_PROTOCOL')
  })

  test('a requester that sends nothing is timed out: E_PEER_TIMEOUT', async () => {
    assert.equal(await refusal(undefined), 'E_PEER_TIMEOUT')
  })

  test('a worker that sends a malformed frame: E_PROTOCOL on the requester', async () => {
    const rogue = peers[2]!
    await rogue.mesh.libp2p.handle(JOB_PROTOCOL, (stream) => {
      lpStream(stream)
        .write(Uint8Array.of(0xa1, 0x61))
        .catch(() => {})
    })
    try {
      await assert.rejects(requester.run(rogue.identity.id, { ...manifestFields }), rejectsWith('E_PROTOCOL'))
    } finally {
      await rogue.mesh.libp2p.unhandle(JOB_PROTOCOL)
    }
  })

  test('a worker that streams more than maxTokens could hold: E_PROTOCOL', async () => {
    const rogue = peers[2]!
    await rogue.mesh.libp2p.handle(JOB_PROTOCOL, async (stream) => {
      const ch = frameChannel<RequesterFrame, WorkerFrame>(stream, requesterFrameSchema, 1 << 21)
      const first = await ch.read({ timeoutMs: 3_000 })
      if (first.t !== 'manifest') return
      await ch.write({ t: 'accept', job: cidOf(first.manifest) })
      for (let i = 0; i < 100; i++) await ch.write({ t: 'token', text: 'x'.repeat(1_000) })
    })
    try {
      await assert.rejects(
        requester.run(rogue.identity.id, { ...manifestFields, maxTokens: 2 }),
        rejectsWith('E_PROTOCOL'),
      )
    } finally {
      await rogue.mesh.libp2p.unhandle(JOB_PROTOCOL)
    }
  })

  test('a worker id that is not a peer id: E_INVALID_ARGUMENT', async () => {
    await assert.rejects(
      requester.run('not-a-peer', { ...manifestFields }),
      rejectsWith('E_INVALID_ARGUMENT'),
    )
  })

  test('a worker whose receipt does not match the output: E_RECEIPT_INVALID', async () => {
    const rogue = peers[2]!
    await rogue.mesh.libp2p.handle(JOB_PROTOCOL, async (stream) => {
      const ch = frameChannel<RequesterFrame, WorkerFrame>(stream, requesterFrameSchema, 1 << 21)
      const first = await ch.read({ timeoutMs: 3_000 })
      if (first.t !== 'manifest') return
      const job = cidOf(first.manifest)
      await ch.write({ t: 'accept', job })
      await ch.write({ t: 'token', text: 'honest output' })
      const receipt = signReceipt(rogue.identity, {
        job,
        requester: peers[1]!.identity.id,
        model: MODEL_DIGEST,
        outputHash: `sha256:${'0'.repeat(64)}`,
        promptTokens: 1,
        outputTokens: 1,
        computeMs: 1,
      })
      const stats = { reason: 'stop' as const, promptTokens: 1, outputTokens: 1, promptEvalMs: 0, evalMs: 0 }
      await ch.write({ t: 'done', stats, receipt })
    })
    try {
      await assert.rejects(
        requester.run(rogue.identity.id, { ...manifestFields }),
        rejectsWith('E_RECEIPT_INVALID'),
      )
    } finally {
      await rogue.mesh.libp2p.unhandle(JOB_PROTOCOL)
    }
  })
})
