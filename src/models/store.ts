// The content-addressed model store: blobs live at models/blobs/sha256-<hex> and names
// ("name:tag") point at them through the database. Invariant: a name only ever points at
// a complete, validated blob. Files are written under models/tmp, fsynced, renamed into
// blobs/, and only then does the name row appear, in one transaction; start() sweeps up
// whatever a crash left between those steps.

import { createHash, randomUUID } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'
import { z } from 'zod'
import { SubstrateError, toSubstrateError } from '../errors.ts'
import type { Logger } from '../logger.ts'
import type { Db } from '../store/database.ts'
import * as manifests from '../store/manifests-table.ts'
import * as table from '../store/models-table.ts'
import { BUILTIN_MODEL_NAMES, type BuiltinModelName, writeBuiltinModel } from './builtin.ts'
import { type ChunkManifest, computeManifest, encodeManifest, manifestCid } from './chunk-manifest.ts'
import { readModelDetails } from './gguf-info.ts'
import { createModelPolicy, type ModelPolicyInit } from './policy.ts'
import { createHttpFetcher, type DownloadInit, progressReporter } from './pull.ts'
import { isSourceRef, sourceFor } from './sources/index.ts'
import type {
  BlobFetch,
  BlobFetcher,
  FetchContext,
  ModelSource,
  PlannedBlob,
  PullPlan,
} from './sources/plan.ts'
import { createUrlSource } from './sources/url.ts'
import type {
  ModelBlobs,
  ModelExtras,
  ModelRecord,
  ModelStore,
  ProgressListener,
  StoredManifest,
} from './types.ts'
import { type OpenWritable, openWritableFile } from './writable.ts'

export interface ModelStoreInit {
  /** $SUBSTRATE_HOME/models */
  dir: string
  openWritable?: OpenWritable
  pull?: Pick<DownloadInit, 'retries' | 'backoffMs' | 'idleTimeoutMs' | 'maxRedirects'>
  /** where pull references resolve; plain http(s) URLs when not given */
  sources?: ModelSource[]
  /** byte fetchers by plan kind, beside the built-in `http` one (e.g. `peers`) */
  fetchers?: Record<string, BlobFetcher>
  /** sources beside `sources` (or the defaults), e.g. `peers:` references */
  extraSources?: ModelSource[]
  /**
   * When this says peers hold a digest a plan names, the `peers` fetcher is tried first and
   * the plan's own fetcher only if that fails.
   */
  peersHold?: (digest: string) => boolean
  policy?: ModelPolicyInit
}

export interface ManagedModelStore extends ModelStore, ModelBlobs {
  start(): Promise<void>
  stop(): Promise<void>
}

const NAME_SEGMENT = /^[a-z0-9][a-z0-9._-]*$/
const TAG = /^[a-z0-9_][a-z0-9._-]{0,127}$/

/** "Llama3.2" → "llama3.2:latest"; throws E_INVALID_ARGUMENT for anything else than name[:tag]. */
export function normalizeModelName(input: string): string {
  const trimmed = input.trim().toLowerCase()
  const colon = trimmed.lastIndexOf(':')
  const hasTag = colon >= 0 && !trimmed.slice(colon).includes('/')
  const name = hasTag ? trimmed.slice(0, colon) : trimmed
  const tag = hasTag ? trimmed.slice(colon + 1) : 'latest'
  const segments = name.split('/')
  if (name.length > 200 || !segments.every((s) => NAME_SEGMENT.test(s)) || !TAG.test(tag)) {
    throw new SubstrateError('E_INVALID_ARGUMENT', `invalid model name "${input}"`, {
      hint: 'names are letters, digits, ".", "_" and "-", with an optional ":tag", like "llama3.2:1b"',
    })
  }
  return `${name}:${tag}`
}

const detailsSchema = z.object({
  format: z.literal('gguf'),
  architecture: z.string(),
  family: z.string(),
  parameterCount: z.number(),
  parameterSize: z.string(),
  quantization: z.string(),
  contextLength: z.number(),
  chatTemplate: z.string().optional(),
  source: z.string().optional(),
  extras: z
    .object({
      template: z.string().optional(),
      system: z.string().optional(),
      params: z.record(z.string(), z.unknown()).optional(),
      license: z.string().optional(),
    })
    .optional(),
})

const KEEP_PARTIAL_DOWNLOADS_MS = 7 * 24 * 3600 * 1000

export function createModelStore(
  components: { db: Db; logger: Logger },
  init: ModelStoreInit,
): ManagedModelStore {
  const { db } = components
  const logger = components.logger.child('models')
  const dir = resolve(init.dir)
  const tmpDir = join(dir, 'tmp')
  const blobsDir = join(dir, 'blobs')
  const openWritable = init.openWritable ?? openWritableFile
  const sources = [...(init.extraSources ?? []), ...(init.sources ?? [createUrlSource()])]
  const fetchers: Record<string, BlobFetcher> = { http: createHttpFetcher(init.pull), ...init.fetchers }
  const policy = createModelPolicy(init.policy)
  /** Bytes promised to downloads in progress, so two pulls cannot both take the last room. */
  let reserved = 0
  const usedBytes = () => table.listBlobs(db).reduce((sum, b) => sum + b.size, 0) + reserved
  const blobRelPath = (hex: string) => `blobs/sha256-${hex}`
  const generating = new Map<string, Promise<ModelRecord>>()
  const changeListeners = new Set<() => void>()
  const changed = () => {
    for (const listener of changeListeners) listener()
  }
  let made: Promise<unknown> | undefined
  const ready = () => {
    made ??= Promise.all([mkdir(blobsDir, { recursive: true }), mkdir(tmpDir, { recursive: true })])
    return made
  }
  // Commits and removals run one at a time, so a removal cannot delete a blob that an
  // import has just decided to reuse.
  let queue: Promise<unknown> = Promise.resolve()
  const serialized = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = queue.then(fn, fn)
    queue = run.catch(() => {})
    return run
  }

  const toRecord = (row: table.ModelRow): ModelRecord => {
    const { source, extras, ...details } = detailsSchema.parse(JSON.parse(row.detailsJson))
    return {
      name: row.name,
      digest: row.digest,
      size: row.size,
      path: join(dir, blobRelPath(row.digest.slice('sha256:'.length))),
      modifiedAt: row.modifiedAt,
      details: { ...details, chatTemplate: details.chatTemplate },
      ...(source === undefined ? {} : { source }),
      ...(extras === undefined ? {} : { extras: extras as ModelExtras }),
    }
  }

  /** Points `name` at a stored blob; the blob the name pointed at before goes if now unused. */
  async function pointName(
    name: string,
    blob: { digest: string; size: number; detailsJson: string },
    manifest?: manifests.ManifestRow,
  ) {
    const replaced = table.getModel(db, name)
    db.transaction(() => {
      const path = blobRelPath(blob.digest.slice('sha256:'.length))
      const modifiedAt = new Date().toISOString()
      table.insertBlob(db, { digest: blob.digest, size: blob.size, path, createdAt: modifiedAt })
      if (manifest !== undefined) manifests.putManifest(db, manifest)
      table.upsertModel(db, {
        name,
        digest: blob.digest,
        size: blob.size,
        detailsJson: blob.detailsJson,
        modifiedAt,
      })
    })
    if (replaced !== undefined && replaced.digest !== blob.digest) await dropBlobIfUnused(replaced.digest)
    changed()
    return toRecord(table.getModel(db, name)!)
  }

  async function dropBlobIfUnused(digest: string): Promise<void> {
    if (!db.transaction(() => table.deleteBlobIfUnused(db, digest))) return
    await rm(join(dir, blobRelPath(digest.slice('sha256:'.length))), { force: true })
  }

  /** Moves a complete file from tmp/ into blobs/ and points `name` at it; `file` is gone after. */
  async function commitFile(
    file: string,
    meta: {
      name: string
      sha256: string
      size: number
      label: string
      onProgress?: ProgressListener | undefined
      source?: string
      extras?: ModelExtras | undefined
      /** Already checked against the file (a peer pull); computed here otherwise. */
      manifest?: ChunkManifest | undefined
    },
  ): Promise<ModelRecord> {
    const digest = `sha256:${meta.sha256}`
    try {
      policy.check({ ...(meta.source === undefined ? {} : { source: meta.source }), name: meta.name, digest })
      meta.onProgress?.({ status: 'verifying model file' })
      const details = {
        ...(await readModelDetails(file, meta.label)),
        ...(meta.source === undefined ? {} : { source: meta.source }),
        ...(meta.extras === undefined ? {} : { extras: meta.extras }),
      }
      // Computed once here, so serving the model to peers never re-hashes it.
      const manifest = await manifestRow(
        meta.manifest ?? (await computeManifest(file, { expectedDigest: digest })),
      )
      const record = await serialized(async () => {
        const blobPath = join(dir, blobRelPath(meta.sha256))
        const onDisk = await stat(blobPath).catch(() => undefined)
        if (onDisk?.size !== meta.size) {
          await rename(file, blobPath)
          await syncDir(blobsDir)
        }
        return pointName(
          meta.name,
          { digest, size: meta.size, detailsJson: JSON.stringify(details) },
          manifest,
        )
      })
      meta.onProgress?.({ status: 'success', digest })
      logger.info('model stored', { name: meta.name, digest, size: meta.size, source: meta.source })
      return record
    } catch (err) {
      throw toSubstrateError(err)
    } finally {
      await rm(file, { force: true }) // already renamed away, or a duplicate, or a failure
    }
  }

  /** Copies `source` into tmp/ while hashing it; the copy is removed on any failure. */
  async function copyToTmp(source: string, onProgress?: ProgressListener) {
    const tmp = join(tmpDir, `import-${randomUUID()}.partial`)
    const { size: total } = await stat(source)
    const report = progressReporter(onProgress, 'importing')
    const hash = createHash('sha256')
    let size = 0
    try {
      const out = await openWritable(tmp, 'w')
      try {
        report(0, total, true)
        for await (const chunk of createReadStream(source, {
          highWaterMark: 1 << 20,
        }) as AsyncIterable<Buffer>) {
          await out.write(chunk, size)
          hash.update(chunk)
          size += chunk.length
          report(size, total)
        }
        await out.sync()
      } finally {
        await out.close()
      }
      return { tmp, sha256: hash.digest('hex'), size }
    } catch (err) {
      await rm(tmp, { force: true })
      throw toSubstrateError(err)
    }
  }

  async function importFile(
    file: string,
    opts: { name: string; onProgress?: ProgressListener },
  ): Promise<ModelRecord> {
    const name = normalizeModelName(opts.name)
    const source = resolve(file)
    const info = await stat(source).catch(() => undefined)
    if (info === undefined || !info.isFile()) {
      throw new SubstrateError('E_NOT_FOUND', `${file} does not exist or is not a file`)
    }
    policy.check({ name })
    policy.checkQuota(usedBytes(), info.size, `importing ${file}`)
    await ready()
    const copy = await copyToTmp(source, opts.onProgress)
    return commitFile(copy.tmp, { ...copy, name, label: basename(file), onProgress: opts.onProgress })
  }

  async function generateBuiltin(builtin: BuiltinModelName, name: string): Promise<ModelRecord> {
    await ready()
    logger.info('generating built-in model', { name })
    const tmp = join(tmpDir, `builtin-${randomUUID()}.gguf`)
    try {
      await writeBuiltinModel(builtin, tmp)
      const hash = createHash('sha256')
      let size = 0
      for await (const chunk of createReadStream(tmp) as AsyncIterable<Buffer>) {
        hash.update(chunk)
        size += chunk.length
      }
      return await commitFile(tmp, { name, sha256: hash.digest('hex'), size, label: builtin })
    } finally {
      await rm(tmp, { force: true })
    }
  }

  async function manifestRow(m: ChunkManifest): Promise<manifests.ManifestRow> {
    const bytes = encodeManifest(m)
    return { digest: m.digest, cid: await manifestCid(bytes), chunkSize: m.chunkSize, bytes }
  }

  // Blobs stored before manifests existed get theirs on first request, once.
  const computing = new Map<string, Promise<StoredManifest | undefined>>()
  async function manifestOf(digest: string): Promise<StoredManifest | undefined> {
    const row = manifests.getManifest(db, digest)
    if (row !== undefined) return { digest, cid: row.cid, bytes: row.bytes }
    const blob = table.getBlob(db, digest)
    if (blob === undefined) return undefined
    let pending = computing.get(digest)
    if (pending === undefined) {
      pending = (async () => {
        const computed = await manifestRow(
          await computeManifest(join(dir, blob.path), { expectedDigest: digest }),
        )
        // The blob may have been removed while it was hashed: the row then has nothing to point at.
        const stored = db.transaction(() => {
          if (table.getBlob(db, digest) === undefined) return false
          manifests.putManifest(db, computed)
          return true
        })
        return stored ? { digest, cid: computed.cid, bytes: computed.bytes } : undefined
      })().finally(() => computing.delete(digest))
      computing.set(digest, pending)
    }
    return pending
  }

  async function resolveName(input: string): Promise<ModelRecord> {
    const name = normalizeModelName(input)
    const row = table.getModel(db, name)
    if (row !== undefined) return toRecord(row)
    const builtin = BUILTIN_MODEL_NAMES.find((b) => `${b}:latest` === name)
    if (builtin === undefined) {
      throw new SubstrateError('E_MODEL_NOT_FOUND', `model ${name} not found`, {
        hint: `pull it first (substrate pull URL --name ${name}), or try substrate-tiny`,
      })
    }
    let pending = generating.get(name)
    if (pending === undefined) {
      pending = generateBuiltin(builtin, name).finally(() => generating.delete(name))
      generating.set(name, pending)
    }
    return pending
  }

  async function pull(
    ref: string,
    opts: { name?: string; sha256?: string; onProgress?: ProgressListener; signal?: AbortSignal },
  ): Promise<ModelRecord> {
    const expected = opts.sha256?.toLowerCase().replace(/^sha256:/, '')
    if (expected !== undefined && !/^[0-9a-f]{64}$/.test(expected)) {
      throw new SubstrateError(
        'E_INVALID_ARGUMENT',
        `"${opts.sha256}" is not a sha256 digest (64 hex digits)`,
      )
    }
    const source = sourceFor(sources, ref)
    // A bad name or a denied reference fails before any request; the allow list is checked
    // once the source has said what the reference is.
    const asName = opts.name === undefined ? {} : { name: normalizeModelName(opts.name) }
    policy.check({ source: ref, ...asName }, { denyOnly: true })
    opts.onProgress?.({ status: 'pulling manifest' })
    const plan = await source.plan(ref, {
      logger,
      ...(opts.onProgress === undefined ? {} : { onProgress: opts.onProgress }),
      ...(opts.signal === undefined ? {} : { signal: opts.signal }),
    })
    if (expected !== undefined && plan.model.sha256 !== undefined && plan.model.sha256 !== expected) {
      throw new SubstrateError(
        'E_CHECKSUM_MISMATCH',
        `${plan.source} publishes sha256 ${plan.model.sha256}, not the ${expected} asked for`,
      )
    }
    const sha256 = expected ?? plan.model.sha256
    return runPlan({ ...plan, model: { ...plan.model, ...(sha256 === undefined ? {} : { sha256 }) } }, opts)
  }

  /** Fetches a plan's model blob (unless the store has it already) and commits it. */
  async function runPlan(
    plan: PullPlan,
    opts: { name?: string; onProgress?: ProgressListener; signal?: AbortSignal },
  ): Promise<ModelRecord> {
    const name = normalizeModelName(opts.name ?? plan.name)
    const { sha256 } = plan.model
    const digest = sha256 === undefined ? undefined : `sha256:${sha256}`
    policy.check({ source: plan.source, name, ...(digest === undefined ? {} : { digest }) })
    const meta = {
      name,
      label: plan.model.label,
      onProgress: opts.onProgress,
      source: plan.source,
      extras: plan.extras,
    }
    const known = table.listModels(db).find((m) => m.digest === digest)
    if (known !== undefined) {
      // Content addressing makes the download pointless: the store has these exact bytes.
      const detailsJson = JSON.stringify({
        ...JSON.parse(known.detailsJson),
        source: plan.source,
        ...(plan.extras === undefined ? {} : { extras: plan.extras }),
      })
      const record = await serialized(() => pointName(name, { ...known, detailsJson }))
      // As Ollama does for a layer it has: the blob's line, already complete.
      const { size } = known
      opts.onProgress?.({
        status: `pulling ${sha256!.slice(0, 12)}`,
        digest: known.digest,
        total: size,
        completed: size,
      })
      opts.onProgress?.({ status: 'success', digest: known.digest })
      return record
    }
    const fetcher = fetchers[plan.model.fetch.kind]
    if (fetcher === undefined) {
      throw new SubstrateError('E_INTERNAL', `no fetcher for "${plan.model.fetch.kind}" plans`)
    }
    if (plan.model.size !== undefined) policy.checkQuota(usedBytes(), plan.model.size, plan.source)
    await ready()
    let promised = 0
    const release = () => {
      reserved -= promised
      promised = 0
    }
    try {
      const ctx: FetchContext = {
        tmpDir,
        logger,
        openWritable,
        status: `pulling ${sha256 === undefined ? plan.model.label : sha256.slice(0, 12)}`,
        ...(opts.onProgress === undefined ? {} : { onProgress: opts.onProgress }),
        ...(opts.signal === undefined ? {} : { signal: opts.signal }),
        admit(size) {
          release()
          const free = policy.quotaBytes === undefined ? undefined : policy.quotaBytes - usedBytes()
          if (size === undefined) return free
          policy.checkQuota(usedBytes(), size, plan.source)
          promised = size
          reserved += size
          return size
        },
      }
      const file = await fetchPreferringPeers(plan.model, fetcher, ctx)
      try {
        opts.onProgress?.({ status: 'verifying sha256 digest' })
        return await commitFile(file.path, { ...file, ...meta })
      } finally {
        await file.settle()
      }
    } finally {
      release()
    }
  }

  /** Peers first when they hold the digest (no upstream traffic), the plan's fetcher if that fails. */
  async function fetchPreferringPeers(model: PlannedBlob, fetcher: BlobFetcher, ctx: FetchContext) {
    const peers = fetchers.peers
    const digest = model.sha256 === undefined ? undefined : `sha256:${model.sha256}`
    if (
      peers === undefined ||
      model.fetch.kind === 'peers' ||
      digest === undefined ||
      !init.peersHold?.(digest)
    )
      return fetcher(model, ctx)
    try {
      return await peers({ ...model, fetch: { kind: 'peers', digest } as BlobFetch }, ctx)
    } catch (err) {
      const error = toSubstrateError(err)
      if (ctx.signal?.aborted === true || error.code === 'E_DISK_FULL' || error.code === 'E_QUOTA_EXCEEDED')
        throw error
      logger.info('pull from peers failed; using the source', {
        digest,
        code: error.code,
        error: error.message,
      })
      return fetcher(model, ctx)
    }
  }

  async function remove(input: string): Promise<void> {
    const name = normalizeModelName(input)
    await serialized(async () => {
      const row = table.getModel(db, name)
      if (row === undefined) throw new SubstrateError('E_MODEL_NOT_FOUND', `model ${name} not found`)
      // One transaction: a crash can leave an unreferenced file (swept by start()), never a row.
      const blobGone = db.transaction(
        () => table.deleteModel(db, name) && table.deleteBlobIfUnused(db, row.digest),
      )
      if (blobGone) await rm(join(dir, blobRelPath(row.digest.slice('sha256:'.length))), { force: true })
      logger.info('model removed', { name })
    })
    changed()
  }

  /** Brings disk and database back into agreement after a crash. */
  async function start(): Promise<void> {
    await ready()
    const now = Date.now()
    for (const entry of await readdir(tmpDir)) {
      const path = join(tmpDir, entry)
      // Interrupted downloads stay so the next pull resumes them; everything else in tmp/
      // is an import or generation that died half-way.
      const resumable = /^download-[0-9a-f]{64}\.(partial|json)$/.test(entry)
      const age = now - ((await stat(path).catch(() => undefined))?.mtimeMs ?? 0)
      if (resumable && age < KEEP_PARTIAL_DOWNLOADS_MS) continue
      logger.info('removing leftover temporary file', { file: entry })
      await rm(path, { recursive: true, force: true })
    }
    const referenced = new Set<string>()
    for (const blob of table.listBlobs(db)) {
      const onDisk = await stat(join(dir, blob.path)).catch(() => undefined)
      const names = table.listModels(db).filter((m) => m.digest === blob.digest)
      if (onDisk?.size === blob.size && names.length > 0) {
        referenced.add(resolve(dir, blob.path))
        continue
      }
      if (names.length > 0)
        logger.warn('model file missing or damaged: forgetting the model', {
          digest: blob.digest,
          names: names.map((m) => m.name),
        })
      db.transaction(() => {
        for (const m of names) table.deleteModel(db, m.name)
        table.deleteBlob(db, blob.digest)
      })
    }
    for (const entry of await readdir(blobsDir)) {
      const path = join(blobsDir, entry)
      if (referenced.has(path)) continue
      logger.info('removing unreferenced blob', { file: entry })
      await rm(path, { recursive: true, force: true })
    }
  }

  return {
    list: () => table.listModels(db).map(toRecord),
    tmpDir,
    manifest: manifestOf,
    blobPath(digest) {
      const blob = table.getBlob(db, digest)
      return blob === undefined || table.countModelsUsingBlob(db, digest) === 0
        ? undefined
        : join(dir, blob.path)
    },
    async adoptFile(file, meta) {
      await ready()
      const name = normalizeModelName(meta.name)
      return commitFile(file, {
        ...meta,
        name,
        sha256: meta.manifest.digest.slice('sha256:'.length),
        size: meta.manifest.size,
      })
    },
    resolve: resolveName,
    importFile,
    pull,
    isPullable: (ref) => isSourceRef(sources, ref),
    remove,
    onChange(listener) {
      changeListeners.add(listener)
      return () => changeListeners.delete(listener)
    },
    start,
    stop: async () => {
      await queue
    },
  }
}

async function syncDir(path: string): Promise<void> {
  const handle = await open(path, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}
