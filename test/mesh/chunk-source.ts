// Chunk sources over a plain file for transfer tests: an honest one, and the hostile peers
// the puller must survive (a corrupt chunk, a stall, a manifest that describes other bytes).

import { open } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ChunkSource } from '../../src/mesh/model-transfer.ts'
import { chunkRange, computeManifest, encodeManifest, readFully } from '../../src/models/chunk-manifest.ts'

/** Benchmarks: a bare libp2p stream carrying a whole file (Noise + Yamux, no framing, no hashing). */
export const RAW_FILE_PROTOCOL = '/substrate-bench/raw-file/1'

export type HolderMode = 'honest' | 'corrupt' | 'stall' | 'lie'

/**
 * `corrupt` flips a byte in every chunk it sends; `stall` sends chunk 0 and then goes
 * silent; `lie` claims its own file's manifest is that of `lieAbout` and serves its own bytes.
 */
export async function fileChunkSource(
  file: string,
  opts: { mode?: HolderMode; lieAbout?: string; chunkSize?: number } = {},
): Promise<ChunkSource & { digest: string; servedChunks(): number }> {
  const manifest = await computeManifest(
    file,
    opts.chunkSize === undefined ? {} : { chunkSize: opts.chunkSize },
  )
  const served =
    opts.mode === 'lie' && opts.lieAbout !== undefined ? { ...manifest, digest: opts.lieAbout } : manifest
  const bytes = encodeManifest(served)
  const handle = await open(file, 'r')
  let sent = 0
  return {
    digest: served.digest,
    servedChunks: () => sent,
    async manifest(digest) {
      return digest === served.digest ? bytes : undefined
    },
    async readChunk(m, index) {
      const { start, end } = chunkRange(m, index)
      const data = Buffer.allocUnsafe(end - start)
      await readFully(handle, data, end - start, start)
      if (opts.mode === 'corrupt') data[data.length >> 1]! ^= 0xff
      if (opts.mode === 'stall' && sent > 0) await sleep(10 * 60_000)
      sent++
      return data
    },
  }
}
