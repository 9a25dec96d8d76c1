// Pulling a model from the peers that hold it: find holders (DHT and capacity view), agree
// on a chunk manifest, fetch chunks from every holder at once — each holder takes the next
// missing chunk when it has room, and near the end idle holders race slow ones for the last
// chunks — check each chunk against the manifest, drop and ban a holder that sends a bad
// chunk or goes quiet, and finally check the whole file's sha256 before the store adopts it.
//
// Crash safety: the partial file and a small state file (which chunks are written) live in
// the store's tmp/ under the names the store keeps across restarts. A resumed pull re-hashes
// the chunks the state file lists (and the few that were landing, not listed yet) and fetches
// only the rest, so neither a torn write nor a stale state file can smuggle a bad byte into
// the model.

import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { open, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { SubstrateError, toSubstrateError } from '../errors.ts'
import type { Logger } from '../logger.ts'
import {
  type ChunkManifest,
  chunkMatches,
  chunkRange,
  decodeManifest,
  readFully,
} from '../models/chunk-manifest.ts'
import { partialPaths, progressReporter } from '../models/pull.ts'
import type { ProgressListener } from '../models/types.ts'
import { allocAligned, type OpenWritable, openWritableFile, type WritableFile } from '../models/writable.ts'
import { MINUTE_MS } from '../protocol/limits.ts'
import type { ChunkSession, FetchedManifest, ModelTransfer } from './model-transfer.ts'

export interface PeerPullComponents {
  transfer: Pick<ModelTransfer, 'fetchManifest' | 'openSession'>
  /** Peers that say they hold the model (DHT providers, capacity records). */
  findHolders(digest: string, signal?: AbortSignal): Promise<string[]>
  logger: Logger
}

export interface PeerPullInit {
  /** Chunk requests in flight per holder (pipelined on one stream). */
  pipelineDepth?: number
  /** Silence from a holder this long drops it. */
  stallTimeoutMs?: number
  /** Called for every chunk verified and written, with the holder it came from (benchmarks, logs). */
  onChunk?: (index: number, peer: string) => void
  /** How long a holder that lied or stalled is left out of later pulls. */
  banMs?: number
}

export interface PeerFetchContext {
  /** Where the partial file and its state live (the store's tmp/, kept across restarts). */
  tmpDir: string
  /** The file-writing seam (tests inject ENOSPC). */
  openWritable?: OpenWritable
  onProgress?: ProgressListener
  /** Progress status while chunks arrive. */
  status?: string
  signal?: AbortSignal
  /** Told the size once the manifest is agreed, before any byte is written; throws to refuse (quota). */
  admit?(size: number): unknown
}

/** A complete file whose sha256 was checked, under tmpDir, for the store to commit. */
export interface PeerFetchedBlob {
  path: string
  sha256: string
  size: number
  manifest: ChunkManifest
  /** Removes the resume state; call after the store took the file. */
  settle(): Promise<void>
}

export interface PeerPullStats {
  /** Chunks received and verified, per holder, in the last pull. */
  chunksFrom: Record<string, number>
  /** Chunks already on disk from an interrupted pull. */
  resumedChunks: number
  /** Holders dropped in the last pull, with the reason. */
  dropped: Record<string, string>
  /** Holders whose stream went away mid-pull and was opened again. */
  reopened: Record<string, number>
}

export interface PeerPuller {
  fetch(digest: string, ctx: PeerFetchContext): Promise<PeerFetchedBlob>
  /** Holders currently banned (lied or stalled), with when the ban ends. */
  banned(): Map<string, number>
  /** What the last pull did; for tests, benchmarks and logs. */
  lastStats(): PeerPullStats | undefined
}

const STATE_VERSION = 1
interface PullState {
  v: number
  digest: string
  manifestCid: string
  /** base64 of the manifest bytes, so a resume needs no peer to read it */
  manifest: string
  written: number[]
}

export function createPeerPuller(components: PeerPullComponents, init: PeerPullInit = {}): PeerPuller {
  const log = components.logger.child('peer-pull')
  const depth = init.pipelineDepth ?? 3
  const stallTimeoutMs = init.stallTimeoutMs ?? 15_000
  const banMs = init.banMs ?? 10 * MINUTE_MS
  const bans = new Map<string, number>()
  let stats: PeerPullStats | undefined
  const isBanned = (peer: string) => (bans.get(peer) ?? 0) > Date.now()
  const ban = (peer: string, why: string) => {
    log.warn('holder dropped and banned', { peer, why, forMs: banMs })
    bans.set(peer, Date.now() + banMs)
  }
  // Two pulls of one model would share a partial file: the second waits for the first.
  const inFlight = new Map<string, Promise<unknown>>()

  async function fetch(digest: string, options: PeerFetchContext): Promise<PeerFetchedBlob> {
    const previous = inFlight.get(digest) ?? Promise.resolve()
    const run = previous.catch(() => {}).then(() => pullOnce(digest, options))
    inFlight.set(digest, run)
    try {
      return await run
    } finally {
      if (inFlight.get(digest) === run) inFlight.delete(digest)
    }
  }

  async function pullOnce(digest: string, options: PeerFetchContext): Promise<PeerFetchedBlob> {
    const paths = partialPaths(options.tmpDir, `substrate-peers:${digest}`)
    const holders = (await components.findHolders(digest, options.signal)).filter((p) => !isBanned(p))
    if (holders.length === 0) {
      throw new SubstrateError('E_MODEL_NOT_FOUND', `no reachable peer holds ${digest}`, {
        hint: 'check `substrate peers`; a holder must be online (and not banned for lying)',
      })
    }
    options.onProgress?.({ status: `asking ${holders.length} peer(s) for the chunk manifest`, digest })
    const answers = await Promise.allSettled(
      holders.map((peer) =>
        components.transfer.fetchManifest(peer, digest, {
          stallTimeoutMs,
          ...(options.signal ? { signal: options.signal } : {}),
        }),
      ),
    )
    // Honest holders cut at the same size and so serve identical manifests: group by CID.
    const groups = new Map<string, { fetched: FetchedManifest; peers: string[] }>()
    let firstError: SubstrateError | undefined
    answers.forEach((answer, i) => {
      const peer = holders[i]!
      if (answer.status === 'rejected') {
        const error = toSubstrateError(answer.reason)
        firstError ??= error
        if (error.code === 'E_PROTOCOL') ban(peer, error.message)
        return
      }
      const group = groups.get(answer.value.cid) ?? { fetched: answer.value, peers: [] }
      group.peers.push(peer)
      groups.set(answer.value.cid, group)
    })
    if (options.signal?.aborted === true)
      throw new SubstrateError('E_CANCELLED', `pull of ${digest} cancelled`)
    const saved = await readState(paths.infoPath, digest)
    // The manifest most holders agree on first; the one a resumable partial was built on wins ties.
    const ordered = [...groups.entries()].sort(
      ([cidA, a], [cidB, b]) =>
        b.peers.length - a.peers.length ||
        Number(cidB === saved?.manifestCid) - Number(cidA === saved?.manifestCid),
    )
    if (ordered.length === 0) {
      throw (
        firstError ?? new SubstrateError('E_MODEL_NOT_FOUND', `no peer would send the manifest of ${digest}`)
      )
    }
    for (const [cid, group] of ordered) {
      const result = await transfer(digest, cid, group.fetched, group.peers, paths, options)
      if (result !== 'manifest-lied') return result
      for (const peer of group.peers) ban(peer, `its manifest ${cid} does not add up to ${digest}`)
    }
    throw new SubstrateError(
      'E_CHECKSUM_MISMATCH',
      `every chunk manifest the peers sent for ${digest} describes other bytes: nothing was stored`,
      { hint: 'the holders that sent them are banned; try again when honest holders are online' },
    )
  }

  async function transfer(
    digest: string,
    cid: string,
    fetched: FetchedManifest,
    peers: string[],
    paths: { path: string; infoPath: string },
    options: PeerFetchContext,
  ): Promise<PeerFetchedBlob | 'manifest-lied'> {
    const { manifest } = fetched
    options.admit?.(manifest.size)
    const total = manifest.chunks.length
    const written = new Array<boolean>(total).fill(false)
    const saved = await readState(paths.infoPath, digest)
    const resume = saved?.manifestCid === cid
    if (resume) for (const i of await recheck(paths.path, manifest, saved.written)) written[i] = true
    const resumedChunks = written.filter(Boolean).length
    const hasher = inOrderHasher(total)
    stats = { chunksFrom: {}, resumedChunks, dropped: {}, reopened: {} }
    const run = stats
    if (resumedChunks > 0)
      log.info('resuming pull from peers', { digest, haveChunks: resumedChunks, of: total })

    const out = await local((options.openWritable ?? openWritableFile)(paths.path, resume ? 'r+' : 'w'))
    const report = progressReporter(options.onProgress, options.status ?? 'pulling from peers', digest)
    let bytesDone = 0
    for (let i = 0; i < total; i++) {
      const { start, end } = chunkRange(manifest, i)
      if (written[i]) bytesDone += end - start
    }
    report(bytesDone, manifest.size, true)
    const state: PullState = {
      v: STATE_VERSION,
      digest,
      manifestCid: cid,
      manifest: Buffer.from(fetched.bytes).toString('base64'),
      written: [],
    }
    // One state write at a time; chunks that land meanwhile share the next one (it reads
    // `written` when it starts), so the file never lags far behind the chunks on disk.
    let stateWrite: Promise<void> = Promise.resolve()
    let nextWrite: Promise<void> | undefined
    const saveState = () => {
      nextWrite ??= stateWrite.then(async () => {
        nextWrite = undefined
        state.written = written.flatMap((w, i) => (w ? [i] : []))
        await local(writeFile(`${paths.infoPath}.tmp`, JSON.stringify(state)))
        await local(rename(`${paths.infoPath}.tmp`, paths.infoPath))
      })
      stateWrite = nextWrite.catch(() => {})
      return nextWrite
    }
    let keep = true // whether the partial is worth keeping for a resume if this attempt fails
    try {
      await saveState()
      await fetchAll(manifest, peers, written, out, saveState, run, options, {
        verified(index, data, peer) {
          hasher.add(index, data)
          init.onChunk?.(index, peer)
        },
        // Reported once the state file lists the chunk: what progress shows survives a crash.
        saved(bytes) {
          bytesDone += bytes
          report(bytesDone, manifest.size)
        },
      })
      await stateWrite
      await local(out.sync())
    } catch (err) {
      const error = toSubstrateError(err)
      // A full disk makes the partial a burden, not a head start.
      if (error.code === 'E_DISK_FULL') keep = false
      throw error
    } finally {
      await out.close().catch(() => {})
      if (!keep) await discard(paths)
    }

    options.onProgress?.({ status: 'verifying sha256 digest', digest })
    // Hashed as chunks landed in order when they did; read back from disk otherwise (a resume).
    const actual = hasher.digest() ?? (await sha256File(paths.path))
    if (`sha256:${actual}` !== digest) {
      log.warn('chunks matched the manifest but the file does not match its digest', { digest, cid })
      await discard(paths)
      return 'manifest-lied'
    }
    log.info('pulled from peers', {
      digest,
      chunks: total,
      resumedChunks: run.resumedChunks,
      chunksFrom: run.chunksFrom,
      dropped: run.dropped,
    })
    return {
      path: paths.path,
      sha256: actual,
      size: manifest.size,
      manifest,
      settle: () => rm(paths.infoPath, { force: true }),
    }
  }

  async function fetchAll(
    manifest: ChunkManifest,
    peers: string[],
    written: boolean[],
    out: WritableFile,
    saveState: () => Promise<void>,
    run: PeerPullStats,
    options: PeerFetchContext,
    on: { verified(index: number, data: Uint8Array, peer: string): void; saved(bytes: number): void },
  ): Promise<void> {
    const pending = written.flatMap((w, i) => (w ? [] : [i]))
    /** chunk → holders fetching it now (more than one only in the end game) */
    const fetching = new Map<number, Set<string>>()
    const sessions = new Set<ChunkSession>()
    const isWritten = (index: number) => written[index] === true
    let remaining = pending.length
    let live = 0
    let fatal: SubstrateError | undefined
    let wake: () => void = () => {}
    let changed = new Promise<void>((r) => {
      wake = r
    })
    const notify = () => {
      wake()
      changed = new Promise<void>((r) => {
        wake = r
      })
    }
    if (remaining === 0) return

    /** The next chunk for `peer`: a missing one, or in the end game one a slower holder has. */
    const take = (peer: string): number | undefined => {
      const next = pending.shift()
      if (next !== undefined) return next
      let best: number | undefined
      for (const [index, holders] of fetching) {
        if (holders.has(peer) || holders.size >= 2) continue
        if (best === undefined || index < best) best = index
      }
      return best
    }

    /**
     * A holder's session, opened again once if its stream ends without a word (E_PEER_GONE:
     * the connection was closed or replaced under it); a holder that lied or stalled is not.
     */
    const runHolder = async (peer: string): Promise<void> => {
      try {
        for (let attempt = 0; attempt < 2; attempt++) {
          if (!(await runSession(peer)) || remaining === 0 || fatal !== undefined) return
          log.info('holder stream ended mid-pull; opening it again', { peer })
          run.reopened[peer] = (run.reopened[peer] ?? 0) + 1
        }
      } finally {
        live--
        notify()
      }
    }

    /** Fetches from one session until done; true when it ended because the stream went away. */
    const runSession = async (peer: string): Promise<boolean> => {
      let session: ChunkSession
      try {
        session = await components.transfer.openSession(peer, manifest, {
          stallTimeoutMs,
          pipelineDepth: depth,
          ...(options.signal ? { signal: options.signal } : {}),
        })
      } catch (err) {
        run.dropped[peer] = toSubstrateError(err).message
        return false
      }
      delete run.dropped[peer]
      sessions.add(session)
      let dropped = false
      let gone = false
      const slot = async () => {
        // Page-aligned and reused: the chunk goes to disk from here with direct I/O
        // (writable.ts), without a page-cache copy and writeback work at the final fsync.
        let aligned: Uint8Array | undefined
        while (remaining > 0 && !dropped && fatal === undefined) {
          const index = take(peer)
          if (index === undefined) {
            await changed
            continue
          }
          const holders = fetching.get(index) ?? new Set()
          holders.add(peer)
          fetching.set(index, holders)
          let data: Uint8Array
          try {
            data = await session.fetch(index)
          } catch (err) {
            const error = toSubstrateError(err)
            // Sessions closed by us (done, cancelled, disk full) end quietly.
            if (fatal !== undefined || remaining === 0) return
            if (!dropped) {
              dropped = true
              run.dropped[peer] = error.message
              if (error.code === 'E_PEER_TIMEOUT' || error.code === 'E_PROTOCOL') ban(peer, error.message)
              else log.info('holder dropped', { peer, code: error.code })
              gone = error.code === 'E_PEER_GONE'
            }
            release(index, peer)
            return
          } finally {
            holders.delete(peer)
          }
          if (isWritten(index)) continue // another holder won the end-game race
          if (!chunkMatches(manifest, index, data)) {
            dropped = true
            run.dropped[peer] = `chunk ${index} does not match the manifest`
            ban(peer, `sent chunk ${index} that does not match its hash`)
            release(index, peer)
            return
          }
          try {
            aligned ??= allocAligned(manifest.chunkSize)
            aligned.set(data)
            await local(out.write(aligned.subarray(0, data.length), chunkRange(manifest, index).start))
          } catch (err) {
            fatal ??= toSubstrateError(err)
            notify()
            return
          }
          if (isWritten(index)) continue // won while this write was on its way: same bytes
          on.verified(index, data, peer)
          written[index] = true
          fetching.delete(index)
          remaining--
          run.chunksFrom[peer] = (run.chunksFrom[peer] ?? 0) + 1
          await saveState().then(
            () => on.saved(data.length),
            (err: unknown) => {
              fatal ??= toSubstrateError(err)
            },
          )
          notify()
        }
      }
      try {
        await Promise.all(Array.from({ length: depth }, slot))
      } finally {
        session.close()
        sessions.delete(session)
      }
      return gone
    }

    /** A chunk a dropped holder had goes back to the front, unless someone else already has it. */
    const release = (index: number, peer: string) => {
      fetching.get(index)?.delete(peer)
      if (!written[index] && (fetching.get(index)?.size ?? 0) === 0 && !pending.includes(index)) {
        fetching.delete(index)
        pending.unshift(index)
      }
      notify()
    }

    live = peers.length
    const holders = peers.map(runHolder)
    const onAbort = () => {
      fatal ??= new SubstrateError('E_CANCELLED', `pull of ${manifest.digest} cancelled`)
      notify()
    }
    options.signal?.addEventListener('abort', onAbort, { once: true })
    try {
      while (remaining > 0 && live > 0 && fatal === undefined) await changed
      if (fatal === undefined && remaining > 0) {
        const kept = written.filter(Boolean).length
        fatal = new SubstrateError(
          'E_PEER_GONE',
          `every holder of ${manifest.digest} went away or was dropped; ${kept} of ${written.length} chunks are kept`,
          { hint: 'run the same pull again later to fetch only the missing chunks' },
        )
      }
      // Stops end-game duplicates and anything still in flight after a failure.
      for (const session of sessions) session.close()
      notify()
      await Promise.all(holders)
    } finally {
      options.signal?.removeEventListener('abort', onAbort)
    }
    if (fatal !== undefined) throw fatal
  }

  return {
    fetch,
    banned: () => new Map([...bans].filter(([, until]) => until > Date.now())),
    lastStats: () => stats,
  }
}

async function readState(infoPath: string, digest: string): Promise<PullState | undefined> {
  try {
    const state = JSON.parse(await readFile(infoPath, 'utf8')) as Partial<PullState>
    if (state.v !== STATE_VERSION || state.digest !== digest || typeof state.manifestCid !== 'string')
      return undefined
    if (!Array.isArray(state.written) || typeof state.manifest !== 'string') return undefined
    decodeManifest(Buffer.from(state.manifest, 'base64'), digest)
    return state as PullState
  } catch {
    return undefined // no state, or a torn one: start over
  }
}

/**
 * Unlisted chunks a resume also re-hashes. The state file is saved after a chunk is written,
 * so the chunks that were landing when the process died are on disk but not listed yet; they
 * are the lowest unlisted ones (chunks are handed out in order), a few per holder.
 */
const UNLISTED_RECHECK = 16

/** The listed chunks, and the first unlisted ones the file reaches, that really are on disk with the right bytes. */
async function recheck(path: string, manifest: ChunkManifest, listed: number[]): Promise<number[]> {
  const file = await open(path, 'r').catch(() => undefined)
  if (file === undefined) return []
  const good: number[] = []
  try {
    const isListed = new Set(listed)
    const { size } = await file.stat()
    const unlisted = manifest.chunks
      .map((_, i) => i)
      .filter((i) => !isListed.has(i) && chunkRange(manifest, i).end <= size)
      .slice(0, UNLISTED_RECHECK)
    const buffer = Buffer.allocUnsafe(manifest.chunkSize)
    for (const index of [...isListed, ...unlisted]) {
      if (!Number.isInteger(index) || index < 0 || index >= manifest.chunks.length) continue
      const { start, end } = chunkRange(manifest, index)
      const ok = await readFully(file, buffer, end - start, start).then(
        () => chunkMatches(manifest, index, buffer.subarray(0, end - start)),
        () => false,
      )
      if (ok) good.push(index)
    }
  } finally {
    await file.close()
  }
  return good
}

/**
 * The file's sha256 computed while chunks arrive, so a pull needs no second pass over the
 * file. Chunks come roughly in order (they are handed out in order); a few that overtake
 * are held until their turn. When too many would be held, or chunks were on disk before
 * (a resume), it gives up and `digest()` says undefined: then the file is read back.
 */
function inOrderHasher(total: number, maxHeld = 16) {
  const hash = createHash('sha256')
  const held = new Map<number, Uint8Array>()
  let next = 0
  let gaveUp = false
  return {
    add(index: number, data: Uint8Array) {
      if (gaveUp || index < next) return
      if (index > next) {
        if (held.size >= maxHeld) {
          gaveUp = true
          held.clear()
        } else held.set(index, data)
        return
      }
      hash.update(data)
      next++
      for (let more = held.get(next); more !== undefined; more = held.get(next)) {
        held.delete(next)
        hash.update(more)
        next++
      }
    },
    digest: () => (gaveUp || next !== total ? undefined : hash.digest('hex')),
  }
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

async function discard(paths: { path: string; infoPath: string }) {
  await Promise.all([
    rm(paths.path, { force: true }),
    rm(paths.infoPath, { force: true }),
    rm(`${paths.infoPath}.tmp`, { force: true }),
  ])
}

/** Local file errors become typed at once (ENOSPC → E_DISK_FULL). */
function local<T>(step: Promise<T>): Promise<T> {
  return step.catch((err: unknown) => Promise.reject(toSubstrateError(err)))
}
