// The mesh subsystem as the composition root sees it: one factory that builds the libp2p
// host, capacity gossip, model providers and the job protocol from the daemon's identity,
// model store and runtime, and derives this node's capacity record from them. `generate`
// runs a job on the best peer that will take it, moving on when a peer refuses or is
// unreachable before the first token, and when one dies or stalls mid-stream it resumes on
// the next with what was already received (prefix continuation, see continuation.ts). What
// each worker did to our jobs feeds its standing (worker-standing.ts), which the next pick
// uses; when every holder is full or busy it waits, bounded, for a slot instead of failing.

import { SubstrateError, toSubstrateError } from '../errors.ts'
import type { ReplayGuard } from '../identity/envelope.ts'
import type { Identity } from '../identity/keys.ts'
import type { Logger } from '../logger.ts'
import { normalizeModelName } from '../models/store.ts'
import type { ModelBlobs, ModelStore } from '../models/types.ts'
import type { Runtime } from '../runtime/runtime.ts'
import {
  type CapacityGossip,
  type CapacityGossipInit,
  type CapacityGossipStats,
  createCapacityGossip,
} from './capacity-gossip.ts'
import type { CapacitySnapshot } from './capacity-record.ts'
import { continuation } from './continuation.ts'
import {
  createJobProtocol,
  type JobProtocol,
  type JobProtocolComponents,
  type JobProtocolInit,
  type JobRequest,
  type JobRequestOptions,
  type MeshJobEvent,
} from './job-protocol.ts'
import { createMeshNode, type MeshNode, type MeshNodeInit } from './libp2p-node.ts'
import { createModelProviders, type ModelProviders } from './model-providers.ts'
import {
  type ChunkSource,
  createModelTransfer,
  type ModelTransfer,
  type ModelTransferInit,
  storeChunkSource,
} from './model-transfer.ts'
import type { LinkStats } from './peer-keeper.ts'
import { createPeerLatency } from './peer-latency.ts'
import { createPeerPuller, type PeerPuller, type PeerPullInit } from './peer-pull.ts'
import { type PickOptions, pickWorkers } from './pick-worker.ts'
import { createRuntimeJobRunner } from './runtime-job.ts'
import type { TrafficSnapshot } from './traffic-meter.ts'
import {
  createWorkerStanding,
  outcomeOf,
  type PeerStanding,
  type WorkerStanding,
  type WorkerStandingInit,
} from './worker-standing.ts'

export interface MeshComponents {
  identity: Identity
  logger: Logger
  models: Pick<ModelStore, 'list'>
  runtime: Pick<Runtime, 'generate' | 'ps'>
  replay?: ReplayGuard
  /** The credits ledger's view of a requester, for the order of the worker's queue. */
  standingOf?: JobProtocolComponents['standingOf']
  /** Held blobs and their chunk manifests, to serve peers pulling a model; none served without. */
  blobs?: Pick<ModelBlobs, 'manifest' | 'blobPath'>
  /** Whether a held model may be handed to peers (policy); all may when absent. */
  shareModel?: (digest: string) => boolean
}

export interface MeshInit {
  node?: MeshNodeInit
  capacity?: CapacityGossipInit
  jobs?: JobProtocolInit
  /** Announce held models in the DHT (on start and on `modelsChanged`). */
  provideModels?: boolean
  /** Serving models to peers (`/substrate/model-chunks/2`). */
  transfer?: ModelTransferInit
  /** Pulling models from peers. */
  pull?: PeerPullInit
  /**
   * Set (to the reason) when this node must serve no jobs, e.g. its runners are not
   * sandboxed: it then offers no models and no slots, refuses any manifest with
   * E_SANDBOX_UNAVAILABLE, and can still send its own jobs to peers.
   */
  refuseJobs?: string
  scheduler?: SchedulerInit
}

export interface SchedulerInit extends WorkerStandingInit {
  /**
   * How long a job may wait, in all, for a slot when every peer holding the model is full or
   * refused as busy, before it fails with the last refusal.
   */
  busyWaitMs?: number
}

export interface Mesh {
  readonly node: MeshNode
  readonly capacity: CapacityGossip
  readonly jobs: JobProtocol
  readonly providers: ModelProviders
  readonly transfer: ModelTransfer
  readonly puller: PeerPuller
  /** Peers that say they hold `digest`: capacity records first, then DHT providers. */
  findHolders(digest: string, signal?: AbortSignal): Promise<string[]>
  start(): Promise<void>
  stop(): Promise<void>
  /** Call after a model was pulled, imported or removed. */
  modelsChanged(): void
  /** Last measured round trip to a connected peer in ms (ping every 15 s), or undefined. */
  latencyMs(peer: string): number | undefined
  /** Peers to ask for a model, best first, from the capacity view. */
  candidates(digest: string): string[]
  /** Every model some peer offers (for `/api/tags`, marked remote). */
  remoteModels(): RemoteModel[]
  /**
   * A model offered under this name (normalized like the store's) or digest. Names are the
   * peers' claims: when peers disagree, the digest most of them offer wins.
   */
  findRemoteModel(nameOrDigest: string): RemoteModel | undefined
  /** Capacity gossip counters, gossipsub's score of each connected peer, and bytes spent so far. */
  gossip(): CapacityGossipStats & {
    scores: Array<{ id: string; score: number }>
    traffic: TrafficSnapshot
    /** Connections now (per peer, duplicates) and redials of dropped mesh links. */
    links?: LinkStats
    /** DHT random-walk queries run since start (every walker's, paced by walkThrottle). */
    walkQueries: number
  }
  /** What our jobs taught us about a peer as a worker: in flight, penalty, successes, failures. */
  standing(peer: string): PeerStanding
  /** Runs a job on the first candidate that admits it; events as Runtime.generate() plus the receipt. */
  generate(request: JobRequest, options?: MeshGenerateOptions): AsyncGenerator<MeshJobEvent>
}

export interface MeshGenerateOptions extends JobRequestOptions {
  /** Overrides SchedulerInit.busyWaitMs for this job; 0 fails at once when every holder is full. */
  busyWaitMs?: number
}

export interface RemoteModel {
  name: string
  digest: string
  /** Peers holding it, and those with it loaded right now. */
  peers: string[]
  loadedOn: string[]
}

// Refusals and failures that say "try someone else" rather than "this request is bad".
const RETRYABLE = new Set([
  'E_WORKER_BUSY',
  'E_MODEL_NOT_FOUND',
  'E_PEER_GONE',
  'E_PEER_TIMEOUT',
  'E_PROTOCOL',
  'E_RECEIPT_INVALID',
  'E_SANDBOX_UNAVAILABLE',
  // From the worker (it is stopping); our own cancel is told apart by the signal.
  'E_CANCELLED',
])

export async function createMesh(components: MeshComponents, init: MeshInit = {}): Promise<Mesh> {
  const log = components.logger.child('mesh')
  const node = await createMeshNode(components, init.node)
  const maxConcurrentJobs = init.jobs?.maxConcurrentJobs ?? 1
  const holds = (digest: string) => components.models.list().some((m) => m.digest === digest)
  // Decode speed as this node measured it serving jobs, smoothed so one odd job does not swing it.
  let tokensPerSecond = 0

  const jobs = createJobProtocol(
    {
      mesh: node,
      identity: components.identity,
      logger: components.logger,
      hasModel: holds,
      runJob: createRuntimeJobRunner({
        runtime: components.runtime,
        modelByDigest: (digest) => components.models.list().find((m) => m.digest === digest),
      }),
      ...(components.replay === undefined ? {} : { replay: components.replay }),
      ...(components.standingOf === undefined ? {} : { standingOf: components.standingOf }),
      ...(init.refuseJobs === undefined
        ? {}
        : {
            refusal: () =>
              new SubstrateError(
                'E_SANDBOX_UNAVAILABLE',
                `this node serves no mesh jobs: ${init.refuseJobs}`,
              ),
          }),
    },
    { ...init.jobs, maxConcurrentJobs },
  )
  const serving = init.refuseJobs === undefined
  const snapshot = (): CapacitySnapshot => ({
    models: (serving ? components.models.list() : [])
      .slice(0, 64)
      .map((m) => ({ digest: m.digest, name: m.name.slice(0, 128) })),
    loaded: [...new Set(components.runtime.ps().map((m) => m.digest))].slice(0, 16),
    freeSlots: serving ? Math.max(0, maxConcurrentJobs - jobs.activeJobs()) : 0,
    tokensPerSecond: Math.round(tokensPerSecond * 10) / 10,
    queueDepth: jobs.queuedJobs(),
  })
  const capacity = createCapacityGossip(
    { mesh: node, identity: components.identity, logger: components.logger, snapshot },
    init.capacity,
  )
  const providers = createModelProviders({ mesh: node, logger: components.logger })
  const holdsNothing: ChunkSource = {
    manifest: async () => undefined,
    readChunk: () => Promise.reject(new SubstrateError('E_MODEL_NOT_FOUND', 'this node serves no models')),
  }
  const transfer = createModelTransfer(
    {
      mesh: node,
      logger: components.logger,
      source:
        components.blobs === undefined
          ? holdsNothing
          : storeChunkSource(components.blobs, components.shareModel),
    },
    init.transfer,
  )
  const findHolders = async (digest: string, signal?: AbortSignal): Promise<string[]> => {
    const offered = capacity
      .view()
      .filter((entry) => entry.record.models.some((m) => m.digest === digest))
      .map((entry) => entry.peer)
    const provided = await providers
      .find(digest, { timeoutMs: signal?.aborted === true ? 0 : 5_000 })
      .catch((err: unknown) => {
        log.debug('DHT provider lookup failed', { digest, error: toSubstrateError(err).message })
        return []
      })
    return [...new Set([...offered, ...provided])]
  }
  const puller = createPeerPuller({ transfer, findHolders, logger: components.logger }, init.pull)

  // What this node announces in the DHT: held models, added as they arrive; a removed model
  // is withdrawn (no more re-announcements; records other nodes keep expire on their own),
  // and the chunk protocol stops serving it at once.
  const provided = new Set<string>()
  const provideAll = () => {
    if (init.provideModels !== true || !serving) return
    const held = new Set(components.models.list().map((m) => m.digest))
    for (const digest of held) {
      if (provided.has(digest)) continue
      provided.add(digest)
      providers.provide(digest).catch((err: unknown) => {
        provided.delete(digest)
        log.debug('model announcement failed', { digest, error: toSubstrateError(err).message })
      })
    }
    for (const digest of provided) {
      if (held.has(digest)) continue
      provided.delete(digest)
      providers.withdraw(digest).catch((err: unknown) => {
        log.debug('model withdrawal failed', { digest, error: toSubstrateError(err).message })
      })
    }
  }
  const offActivity = jobs.onActivity(() => capacity.notifyChanged())
  const offJobEnd = jobs.onJobEnd((outcome) => {
    const s = outcome.stats
    if (s === undefined || s.evalMs <= 0 || s.outputTokens < 2) return
    const measured = (s.outputTokens - 1) / (s.evalMs / 1000)
    tokensPerSecond = tokensPerSecond === 0 ? measured : 0.8 * tokensPerSecond + 0.2 * measured
  })

  // Round trips to connected peers, for ranking (nearer first among equals) and `substrate peers`.
  const latency = createPeerLatency({ mesh: node, capacity })
  const standing: WorkerStanding = createWorkerStanding(init.scheduler)
  const busyWaitMs = init.scheduler?.busyWaitMs ?? 10_000
  const pickOptions = (exclude?: ReadonlySet<string>): PickOptions => ({
    ...(exclude === undefined ? {} : { exclude }),
    latencyMs: latency.latencyMs,
    inFlight: standing.inFlight,
    maxInFlightPerPeer: standing.maxInFlightPerPeer,
    penalty: standing.penalty,
  })
  const candidates = (digest: string) => pickWorkers(capacity.view(), digest, pickOptions())

  const remoteModels = (): RemoteModel[] => {
    const byDigest = new Map<string, RemoteModel>()
    for (const entry of capacity.view()) {
      for (const m of entry.record.models) {
        const model = byDigest.get(m.digest) ?? { name: m.name, digest: m.digest, peers: [], loadedOn: [] }
        model.peers.push(entry.peer)
        if (entry.record.loaded.includes(m.digest)) model.loadedOn.push(entry.peer)
        byDigest.set(m.digest, model)
      }
    }
    return [...byDigest.values()]
      .map((m) => ({ ...m, peers: m.peers.sort(), loadedOn: m.loadedOn.sort() }))
      .sort((a, b) => b.peers.length - a.peers.length)
  }
  const findRemoteModel = (nameOrDigest: string): RemoteModel | undefined => {
    const models = remoteModels()
    if (nameOrDigest.startsWith('sha256:')) return models.find((m) => m.digest === nameOrDigest)
    let name: string
    try {
      name = normalizeModelName(nameOrDigest)
    } catch {
      return undefined
    }
    return models.find((m) => m.name === name)
  }

  async function* generate(
    request: JobRequest,
    options: MeshGenerateOptions = {},
  ): AsyncGenerator<MeshJobEvent> {
    const { signal } = options
    // Peers that failed this request are not asked again; those that were only busy may be.
    const tried = new Set<string>()
    const busy = new Set<string>()
    const waitUntil = Date.now() + (options.busyWaitMs ?? busyWaitMs)
    let waits = 0
    let sawFull = false
    let lastError: SubstrateError | undefined
    // What earlier workers streamed before they failed: the next one continues from it.
    let received = ''
    let receivedTokens = 0
    for (;;) {
      const view = capacity.view()
      const worker = pickWorkers(view, request.model, pickOptions(tried))[0]
      if (worker === undefined) {
        // Every holder is full (or refused as busy): wait for a slot, bounded, rather than fail
        // a request the mesh could serve in a moment.
        const full = pickWorkers(view, request.model, { ...pickOptions(tried), includeFull: true })
        if (full.length === 0 && busy.size === 0) break
        sawFull = true
        if (Date.now() >= waitUntil || signal?.aborted === true) break
        const ms = Math.min(100 * 2 ** waits++, 1_000, waitUntil - Date.now())
        await standing.released(ms, signal)
        for (const peer of busy) tried.delete(peer)
        busy.clear()
        continue
      }
      tried.add(worker)
      const attempt = received === '' ? request : continuation(request, received, receivedTokens)
      if (attempt === undefined) break
      const tokensBefore = receivedTokens
      const release = standing.begin(worker)
      try {
        for await (const ev of jobs.stream(worker, attempt, signal === undefined ? {} : { signal })) {
          if (ev.type === 'token') {
            received += ev.text
            // A worker that does not count tokens is taken at one per frame: an undercount,
            // so the continuation may run a few tokens long, never short.
            receivedTokens += ev.tokens ?? 1
            yield ev
          } else {
            standing.record(worker, 'success')
            const stats = { ...ev.stats, outputTokens: ev.stats.outputTokens + tokensBefore }
            yield { ...ev, stats, ...(tokensBefore > 0 ? { resumedAfterTokens: tokensBefore } : {}) }
          }
        }
        return
      } catch (err) {
        const error = toSubstrateError(err)
        if (signal?.aborted === true) throw error
        const outcome = outcomeOf(error.code)
        if (outcome !== undefined) standing.record(worker, outcome)
        if (!RETRYABLE.has(error.code)) throw error
        if (error.code === 'E_WORKER_BUSY') busy.add(worker)
        if (received === '')
          log.info('worker did not take the job; trying the next', { worker, code: error.code })
        else
          log.warn('worker failed mid-stream; continuing on the next', {
            worker,
            code: error.code,
            receivedTokens,
          })
        lastError = error
      } finally {
        release()
      }
    }
    if (signal?.aborted === true) throw new SubstrateError('E_CANCELLED', 'job cancelled')
    if (lastError === undefined && sawFull) {
      throw new SubstrateError('E_WORKER_BUSY', `every peer holding model ${request.model} is busy`, {
        hint: 'try again in a moment',
      })
    }
    throw (
      lastError ??
      new SubstrateError('E_MODEL_NOT_FOUND', `no peer in the mesh offers model ${request.model} right now`, {
        hint: 'pull the model locally, or wait for a peer that holds it to join',
      })
    )
  }

  return {
    node,
    capacity,
    jobs,
    providers,
    transfer,
    puller,
    findHolders,
    async start() {
      await node.start()
      await jobs.start()
      await transfer.start()
      await capacity.start()
      latency.start()
      provideAll()
    },
    async stop() {
      offActivity()
      offJobEnd()
      latency.stop()
      await capacity.stop()
      await transfer.stop()
      await jobs.stop()
      await node.stop()
    },
    modelsChanged() {
      capacity.notifyChanged()
      provideAll()
    },
    latencyMs: latency.latencyMs,
    standing: (peer) => standing.standing(peer),
    gossip() {
      const pubsub = node.libp2p.services.pubsub
      // The GossipSub class has getScore; its exported interface does not declare it.
      const score = (pubsub as unknown as { getScore?: (peer: string) => number }).getScore
      const scores = pubsub.getPeers().map((id) => ({
        id: id.toString(),
        score: Math.round((score?.call(pubsub, id.toString()) ?? 0) * 100) / 100,
      }))
      const links = node.links()
      return {
        ...capacity.stats(),
        scores,
        traffic: node.traffic(),
        ...(links === undefined ? {} : { links }),
        walkQueries: node.libp2p.services.walkThrottle.queries,
      }
    },
    candidates,
    remoteModels,
    findRemoteModel,
    generate,
  }
}
