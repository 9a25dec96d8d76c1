// Holders in their own processes and a puller in the test process, for peer-transfer tests.

import { type ChildProcess, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { generateIdentity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import { createMeshNode, type MeshNode } from '../../src/mesh/libp2p-node.ts'
import { createModelTransfer } from '../../src/mesh/model-transfer.ts'
import { createPeerPuller, type PeerPuller, type PeerPullInit } from '../../src/mesh/peer-pull.ts'
import type { OpenWritable } from '../../src/models/pull.ts'
import type { ModelRecord } from '../../src/models/types.ts'
import type { HolderMode } from './chunk-source.ts'

export interface Holder {
  id: string
  addr: string
  digest: string
  child: ChildProcess
  kill(): void
}

export async function spawnHolder(config: {
  file: string
  mode?: HolderMode
  lieAbout?: string
  bytesPerSecond?: number
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
      timer = setTimeout(() => reject(new Error('holder did not start')), 30_000)
    }),
  ]).finally(() => clearTimeout(timer))
  const info = JSON.parse(line) as { id: string; addr: string; digest: string }
  return {
    ...info,
    child,
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    },
  }
}

/** A file of random bytes: transfer does not care what a model contains. */
export async function randomFile(path: string, size: number): Promise<void> {
  await writeFile(path, randomBytes(size))
}

export interface TestPuller {
  mesh: MeshNode
  puller: PeerPuller
  /** Files the (fake) store adopted, in order. */
  adopted: string[]
  stop(): Promise<void>
}

/**
 * A puller on a real libp2p node. The store is a stand-in that only moves the adopted file:
 * these files are random bytes, not GGUF (the acceptance test uses real stores).
 */
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
  const adopted: string[] = []
  const puller = createPeerPuller(
    {
      transfer,
      findHolders: async () => holders.map((h) => h.id),
      store: {
        tmpDir,
        async adoptFile(file, meta) {
          const dest = join(dir, `adopted-${adopted.length}`)
          await rename(file, dest)
          adopted.push(dest)
          return {
            name: meta.name,
            digest: meta.manifest.digest,
            size: meta.manifest.size,
            path: dest,
          } as ModelRecord
        },
      },
      logger: silentLogger,
      ...(openWritable === undefined ? {} : { openWritable }),
    },
    { stallTimeoutMs: 3_000, ...init },
  )
  return { mesh, puller, adopted, stop: () => mesh.stop() }
}
