// The composition root: the one place subsystems are constructed and wired. Everything a
// daemon owns hangs off the SubstrateNode this returns; `start()` brings it up in
// dependency order and `stop()` takes it down in reverse.

import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { routesFor } from './api/routes.ts'
import type { MeshRouteComponents } from './api/routes-mesh.ts'
import { type ApiServer, createApiServer } from './api/server.ts'
import type { Config } from './config/schema.ts'
import { SubstrateError } from './errors.ts'
import { checkFits, detectHardware, estimateModelMemory, type HardwareInfo } from './hardware/detect.ts'
import { type Identity, loadOrCreateIdentity } from './identity/keys.ts'
import { createLedger, type Ledger } from './ledger/ledger.ts'
import { ensureMembership } from './ledger/membership.ts'
import { receiptsLoggedBy } from './ledger/receipt-history.ts'
import { createLogger, type Logger } from './logger.ts'
import type { CountersignedReceipt } from './mesh/job-protocol.ts'
import { createLedgerSync } from './mesh/ledger-sync.ts'
import { createMesh, type Mesh } from './mesh/mesh.ts'
import { createPeersFetcher, createPeersSource } from './mesh/peer-source.ts'
import { createSpotCheck } from './mesh/spot-check.ts'
import { defaultSources } from './models/sources/index.ts'
import { createModelStore } from './models/store.ts'
import type { ModelStore } from './models/types.ts'
import { builtEnginePath, resolveEngine, startBackgroundEngineBuild } from './runtime/engine.ts'
import { createRuntime, type Runtime } from './runtime/runtime.ts'
import { createRunnerSpawner, type SandboxStatus } from './sandbox/select.ts'
import { acquireHomeLock, type Db, openDatabase } from './store/database.ts'

export interface SubstrateNode {
  readonly config: Config
  readonly logger: Logger
  readonly identity: Identity
  readonly db: Db
  /** the credits ledger; this node is bound to `member` in it */
  readonly ledger: Ledger
  /** the member this node's credits belong to (the node itself by default) */
  readonly member: string
  readonly models: ModelStore
  readonly runtime: Runtime
  /** the runner sandbox really in force; `enforced: false` means local requests only */
  readonly sandbox: SandboxStatus
  readonly api: ApiServer
  /** undefined when mesh.enabled is false */
  readonly mesh: Mesh | undefined
  /** resolves when stop() has finished (e.g. after a shutdown request) */
  readonly stopped: Promise<void>
  stop(): Promise<void>
}

export interface CreateNodeOptions {
  logger?: Logger
  describeConfig?: () => Array<{ key: string; value: unknown; source: string }>
  /**
   * Runs heavy one-time start-up work (the ledger's fold) at full speed when the caller starts
   * the daemon lean (src/cli/lean-heap.ts); by default it just runs it.
   */
  fullSpeed?: <T>(work: () => T) => T
}

/** Builds and starts a daemon on `config.home`. Refuses if another daemon holds the home. */
export async function createNode(config: Config, options: CreateNodeOptions = {}): Promise<SubstrateNode> {
  const logger = options.logger ?? createLogger({ level: config.log.level })
  mkdirSync(config.home, { recursive: true, mode: 0o700 })
  const releaseLock = acquireHomeLock(config.home)
  const cleanup: Array<() => Promise<void> | void> = [releaseLock]
  try {
    const identity = await loadOrCreateIdentity(join(config.home, 'identity.key'))
    const db = openDatabase(join(config.home, 'substrate.db'))
    cleanup.unshift(() => db.close())
    const ledger = createLedger({ db })
    const fullSpeed = options.fullSpeed ?? ((work) => work())
    fullSpeed(() => ledger.start())
    cleanup.unshift(() => ledger.stop())
    // The node key is its own member key for now; a separate member key would sign these
    // two ops instead and bind several nodes (membership.ts).
    // A node whose own chain is frozen by a fork proof cannot append: it still serves, but
    // nothing it logs counts, and the log says so.
    const membership = { member: identity.id }
    try {
      const joined = ensureMembership(ledger, { member: identity, node: identity })
      if (joined.appended.length > 0) {
        logger.info('joined the ledger', { member: joined.member, ops: joined.appended })
      }
    } catch (err) {
      logger.error('could not join the credits ledger; this node earns and spends nothing', {
        error: err instanceof Error ? err.message : String(err),
      })
    }
    // Both sides log each countersigned receipt in their own chain: the worker's and the
    // requester's copies are the same bytes, so the ledger counts it once.
    const logReceipt = (role: 'worker' | 'requester', receipt: CountersignedReceipt) => {
      try {
        ledger.append(identity, { kind: 'receipt', body: { receipt: receipt.bytes } })
      } catch (err) {
        logger.warn('could not log a receipt', {
          role,
          receipt: receipt.cid,
          error: err instanceof Error ? err.message : String(err),
        })
      }
    }
    // Peers are one more place to pull from: `peers:` references, and any pull whose digest
    // peers hold. The mesh starts after the store, so both look it up per pull.
    let mesh: Mesh | undefined
    const models = createModelStore(
      { db, logger },
      {
        dir: join(config.home, 'models'),
        sources: defaultSources(config.models, process.env),
        policy: { allow: config.models.allow, deny: config.models.deny, quotaBytes: config.models.quota },
        extraSources: [createPeersSource({ findRemoteModel: (ref) => mesh?.findRemoteModel(ref) })],
        fetchers: { peers: createPeersFetcher(() => mesh?.puller) },
        peersHold: (digest) => mesh?.findRemoteModel(digest) !== undefined,
      },
    )
    await models.start()
    cleanup.unshift(() => models.stop())
    // The built-in tiny model is always there (generated in ~20 ms), so a fresh node can answer.
    await models.resolve('substrate-tiny')

    let hardware: HardwareInfo = await detectHardware({ home: config.home, probeGpu: false })
    const refreshHardware = async () => {
      hardware = await detectHardware({ home: config.home, probeGpu: false })
      return hardware
    }
    const runners = await createRunnerSpawner({ logger }, { backend: config.sandbox.backend })
    const sandbox = runners.describe()
    const engineSetting = config.runtime.engine
    const engine = () => resolveEngine(engineSetting, config.runtime.llamaServer)
    if (
      engineSetting === 'auto' &&
      config.runtime.engineBuild &&
      runners.enginePathInside?.(builtEnginePath()) !== undefined &&
      engine().kind === 'node-llama-cpp'
    ) {
      const build = startBackgroundEngineBuild(logger)
      cleanup.unshift(async () => {
        build.stop()
        await build.done
      })
    } else if (engineSetting !== 'node-llama-cpp') {
      engine() // a configured llama-server that is missing: refuse to start, with the hint
    }
    const runtime = createRuntime(
      { logger },
      {
        launcher: runners,
        engine,
        threads: config.runtime.threads,
        parallel: config.runtime.parallel,
        contextSize: config.runtime.contextSize,
        keepAliveMs: config.runtime.keepAlive,
        maxLoadedModels: config.runtime.maxLoadedModels,
        streamWindowMs: config.runtime.streamWindow,
        checkCanLoad: (model, contextSize, parallel) =>
          checkFits(
            hardware,
            estimateModelMemory({
              fileSize: model.size,
              contextLength: contextSize,
              parallel,
            }),
          ),
      },
    )
    cleanup.unshift(() => runtime.stop())

    // The mesh after the runtime it serves jobs from, stopped before it (cleanup runs front first).
    // An unsandboxed node still asks peers, but serves no one (issue 6).
    let meshInfo: MeshRouteComponents['mesh']
    if (config.mesh.enabled) {
      mesh = await createMesh(
        {
          identity,
          logger,
          models,
          runtime,
          standingOf: (requester) => ledger.standingOf(requester),
          blobs: models,
        },
        {
          node: {
            listen: config.mesh.listen,
            bootstrap: config.mesh.bootstrap,
            mdns: config.mesh.mdns,
            relayClient: config.mesh.relayClient,
            relayServe: config.mesh.relayServe
              ? { maxReservations: config.mesh.relayMaxReservations }
              : false,
            randomWalkMinConnections: config.mesh.randomWalk,
            // Known peers survive a restart, so the node rejoins without its bootstrap list.
            datastorePath: join(config.home, 'mesh', 'datastore.db'),
          },
          jobs: { maxConcurrentJobs: config.mesh.jobSlots, stallTimeoutMs: config.mesh.stallTimeout },
          provideModels: true,
          ...(sandbox.enforced
            ? {}
            : { refuseJobs: `its runners are not sandboxed (${sandbox.reason ?? 'see substrate doctor'})` }),
        },
      )
      await mesh.start()
      const started = mesh
      cleanup.unshift(() => started.stop())
      meshInfo = {
        peerId: started.node.peerId,
        multiaddrs: () => started.node.multiaddrs(),
        view: () => started.capacity.view(),
        latencyMs: (peer) => started.latencyMs(peer),
        standing: (peer) => started.standing(peer),
        gossip: () => started.gossip(),
        reachability: () => started.node.reachability(),
        connectionKind: (peer) => started.node.connectionKind(peer),
      }
      const offModels = models.onChange?.(() => started.modelsChanged())
      cleanup.unshift(() => offModels?.())
      const offJobEnd = mesh.jobs.onJobEnd((o) => {
        if (o.receipt !== undefined) logReceipt('worker', o.receipt)
      })
      cleanup.unshift(offJobEnd)
      // The ledger on the network: heads gossip, and pulls of only what is missing.
      const ledgerSync = createLedgerSync(
        { mesh: started.node, ledger, logger },
        { keepAliveMs: config.mesh.ledgerKeepAlive },
      )
      await ledgerSync.start()
      cleanup.unshift(() => ledgerSync.stop())
      // Spot checks (DESIGN.md step 8): a sampled share of the receipts we countersign goes to
      // a third node holding the model; we check others' in our own sandboxed runners.
      const spotCheck = createSpotCheck(
        {
          mesh: started.node,
          identity,
          logger,
          ledger,
          runtime,
          modelByDigest: (digest) => models.list().find((m) => m.digest === digest),
          candidates: (digest) =>
            started.capacity
              .view()
              .filter((e) => e.record.models.some((m) => m.digest === digest))
              .map((e) => e.peer),
          ...(sandbox.enforced
            ? {}
            : {
                refusal: () =>
                  new SubstrateError(
                    'E_SANDBOX_UNAVAILABLE',
                    'this node checks nothing for others: its runners are not sandboxed',
                  ),
              }),
        },
        { rate: config.mesh.spotCheckRate },
      )
      await spotCheck.start()
      cleanup.unshift(() => spotCheck.stop())
      const offCountersigned = started.jobs.onCountersigned((job) => spotCheck.consider(job))
      cleanup.unshift(offCountersigned)
    }

    let resolveStopped!: () => void
    const stopped = new Promise<void>((resolve) => {
      resolveStopped = resolve
    })
    let stopping: Promise<void> | undefined
    const stop = () => {
      stopping ??= (async () => {
        for (const step of cleanup) {
          try {
            await step()
          } catch (err) {
            logger.warn('error while stopping', { error: err instanceof Error ? err.message : String(err) })
          }
        }
        resolveStopped()
      })()
      return stopping
    }

    const api = createApiServer(
      {
        logger,
        routes: routesFor({
          config,
          identity,
          models,
          runtime,
          sandbox,
          hardware: refreshHardware,
          parallel: config.runtime.parallel,
          mesh,
          meshInfo,
          ...(meshInfo === undefined ? {} : { meshAddrs: meshInfo.multiaddrs }),
          onReceipt: (served) => logReceipt('requester', served.receipt),
          recentReceipts: () =>
            receiptsLoggedBy(db, identity.id, 100)
              .reverse()
              .map(({ receipt }) => ({
                role: receipt.worker === identity.id ? ('worker' as const) : ('requester' as const),
                receipt,
              })),
          ledger: {
            db,
            ledger,
            node: identity.id,
            member: membership.member,
            vouch: (member) => ledger.append(identity, { kind: 'vouch', body: { member } }),
          },
          describeConfig: options.describeConfig ?? (() => []),
          requestShutdown: () => setImmediate(() => void stop()),
        }),
      },
      { host: config.api.host, port: config.api.port, token: config.api.token },
    )
    await api.start()
    cleanup.unshift(() => api.stop())
    return {
      config,
      logger,
      identity,
      db,
      ledger,
      member: membership.member,
      models,
      runtime,
      sandbox,
      api,
      mesh,
      stopped,
      stop,
    }
  } catch (err) {
    for (const step of cleanup) await step()
    throw err
  }
}
