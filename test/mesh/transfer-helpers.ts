// Holders in their own processes and a puller in the test process, for peer-transfer tests.

import { type ChildProcess, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, open } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { generateIdentity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import { createMeshNode, type MeshNode } from '../../src/mesh/libp2p-node.ts'
import { createModelTransfer } from '../../src/mesh/model-transfer.ts'
import {
  createPeerPuller,
  type PeerFetchContext,
  type PeerFetchedBlob,
  type PeerPuller,
  type PeerPullInit,
} from '../../src/mesh/peer-pull.ts'
import type { OpenWritable } from '../../src/models/writable.ts'
import { MiB } from '../../src/protocol/limits.ts'
import type { HolderMode } from './chunk-source.ts'

export interface Holder {
  id: string
  addr: string
  digest: string
  /** with `baselines`: a TCP port that streams the whole file to whoever connects */
  tcpPort?: number
  child: ChildProcess
  kill(): void
  /** Closes stdin: the holder reports how many chunks it served and exits. */
  finish(): Promise<{ servedChunks: number }>
}

export async function spawnHolder(config: {
  file: string
  mode?: HolderMode
  lieAbout?: string
  bytesPerSecond?: number
  bootstrap?: string
  baselines?: boolean
  chunkSize?: number
}): Promise<Holder> {
  const child = spawn(
    process.execPath,
    [new URL('./chunk-holder-process.ts', import.meta.url).pathname, JSON.stringify(config)],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  )
  const lines = createInterface({ input: child.stdout! })
  let timer: NodeJS.Timeout | undefined
  const line = await Promise.race([
    new Promise<string>((resolve) => lines.once('line', resolve)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('holder did not start')), 90_000)
    }),
  ]).finally(() => clearTimeout(timer))
  const info = JSON.parse(line) as { id: string; addr: string; digest: string; tcpPort?: number }
  return {
    ...info,
    child,
    async finish() {
      const report = new Promise<string>((resolve) => lines.once('line', resolve))
      child.stdin!.end()
      return JSON.parse(await report) as { servedChunks: number }
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    },
  }
}

/** A file of random bytes (transfer does not care what a model contains); returns its digest. */
export async function randomFile(path: string, size: number): Promise<string> {
  const out = await open(path, 'w')
  const hash = createHash('sha256')
  try {
    for (let at = 0; at < size; at += 64 * MiB) {
      const piece = randomBytes(Math.min(64 * MiB, size - at))
      hash.update(piece)
      await out.write(piece, 0, piece.length, at)
    }
  } finally {
    await out.close()
  }
  return `sha256:${hash.digest('hex')}`
}

export interface TestPuller {
  mesh: MeshNode
  puller: PeerPuller
  tmpDir: string
  /** Fetches into this puller's tmp dir; the resume state is settled on success. */
  pull(digest: string, ctx?: Partial<PeerFetchContext>): Promise<PeerFetchedBlob>
  stop(): Promise<void>
}

/** A puller on a real libp2p node, connected to `holders`, writing under `dir`/tmp. */
export async function startPuller(
  dir: string,
  holders: Holder[],
  init: PeerPullInit = {},
  openWritable?: OpenWritable,
): Promise<TestPuller> {
  const mesh = await createMeshNode({ identity: generateIdentity(), logger: silentLogger })
  await mesh.start()
  for (const h of holders) await mesh.dial(h.addr, 10_000)
  const transfer = createModelTransfer({
    mesh,
    logger: silentLogger,
    source: { manifest: async () => undefined, readChunk: () => Promise.reject(new Error('holds nothing')) },
  })
  const tmpDir = join(dir, 'tmp')
  await mkdir(tmpDir, { recursive: true })
  const puller = createPeerPuller(
    { transfer, findHolders: async () => holders.map((h) => h.id), logger: silentLogger },
    { stallTimeoutMs: 10_000, ...init },
  )
  return {
    mesh,
    puller,
    tmpDir,
    async pull(digest, ctx = {}) {
      const fetched = await puller.fetch(digest, {
        tmpDir,
        ...(openWritable === undefined ? {} : { openWritable }),
        ...ctx,
      })
      await fetched.settle()
      return fetched
    },
    stop: () => mesh.stop(),
  }
}
