// `/substrate/job/1`, both sides on one node: every daemon is a requester (its users ask the
// mesh) and a worker (it serves the mesh). The protocol itself is in job-worker.ts and
// job-requester.ts, its frames in job-codec.ts and its signed records in job-records.ts;
// this is the one object the composition root wires.

import type { SubstrateError } from '../errors.ts'
import type { ReplayGuard } from '../identity/envelope.ts'
import type { Identity } from '../identity/keys.ts'
import type { Logger } from '../logger.ts'
import { createJobRequester, type JobRequester, type JobRequesterInit } from './job-requester.ts'
import {
  createJobWorker,
  type JobWorker,
  type JobWorkerComponents,
  type JobWorkerInit,
  type RunJob,
} from './job-worker.ts'
import type { MeshNode } from './libp2p-node.ts'

export { JOB_PROTOCOL } from './job-codec.ts'
export type { CountersignedReceipt, JobManifest, Receipt } from './job-records.ts'
export { verifyCountersignedReceipt } from './job-records.ts'
export type {
  CountersignedJob,
  JobRequest,
  JobRequestOptions,
  MeshJobEvent,
  MeshJobResult,
} from './job-requester.ts'
export type { AdmittedJob, JobOutcome, RunJob } from './job-worker.ts'

export interface JobProtocolComponents {
  mesh: MeshNode
  identity: Identity
  logger: Logger
  /** Whether this node holds the model with this digest (the worker refuses otherwise). */
  hasModel(digest: string): boolean
  /** Runs an admitted job, e.g. by resolving the digest and calling Runtime.generate(). */
  runJob: RunJob
  /** Defaults to an in-memory guard; the daemon may pass one backed by SQLite. */
  replay?: ReplayGuard
  /** Why this node serves no jobs at all right now, or undefined when it does. */
  refusal?: () => SubstrateError | undefined
  /** The requester's standing in the credits ledger, for the worker's queue order. */
  standingOf?: JobWorkerComponents['standingOf']
}

export type JobProtocolInit = JobWorkerInit & JobRequesterInit

export interface JobProtocol extends JobWorker, JobRequester {}

export function createJobProtocol(
  components: JobProtocolComponents,
  init: JobProtocolInit = {},
): JobProtocol {
  const worker = createJobWorker(components, init)
  const requester = createJobRequester(components, init)
  return {
    start: () => worker.start(),
    stop: () => worker.stop(),
    activeJobs: () => worker.activeJobs(),
    queuedJobs: () => worker.queuedJobs(),
    onActivity: (listener) => worker.onActivity(listener),
    onJobEnd: (listener) => worker.onJobEnd(listener),
    onCountersigned: (listener) => requester.onCountersigned(listener),
    stream: (peer, request, options) => requester.stream(peer, request, options),
    run: (peer, request, options) => requester.run(peer, request, options),
  }
}
