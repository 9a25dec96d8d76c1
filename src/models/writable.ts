// The file-writing seam of the model store: tests inject one that fails (ENOSPC) to check
// that a full disk leaves nothing half-written behind.
//
// Writes from page-aligned memory (`allocAligned`) go to the disk with direct I/O for their
// page-aligned middle: no copy into the page cache and no writeback work later, which on
// this machine cost more CPU than the rest of a download (buffered write + fsync of 1 GiB:
// ~1.3-3 s of system time; direct: ~0.2 s). The ragged ends, writes from other memory and
// file systems that refuse direct I/O go through the page cache as before. Durability is
// unchanged: the caller's fsync is what makes either kind stable.

import { constants } from 'node:fs'
import { type FileHandle, open } from 'node:fs/promises'

export interface WritableFile {
  write(data: Uint8Array, position: number): Promise<unknown>
  /** Several buffers in one system call, without copying them together first. */
  writev?(data: Uint8Array[], position: number): Promise<unknown>
  sync(): Promise<void>
  close(): Promise<void>
}
export type OpenWritable = (path: string, flags: 'w' | 'r+') => Promise<WritableFile>

/** What direct I/O needs aligned: memory, file offsets and lengths (disks ask for 512 or 4096). */
export const DIRECT_ALIGN = 4096
const alignedMemory = new WeakSet<ArrayBufferLike>()

/** `size` bytes of page-aligned memory (WebAssembly memory starts on a page): writable with direct I/O. */
export function allocAligned(size: number): Uint8Array {
  const pages = Math.ceil(size / 65536)
  const { buffer } = new WebAssembly.Memory({ initial: pages, maximum: pages })
  alignedMemory.add(buffer)
  return new Uint8Array(buffer, 0, size)
}

export const openWritableFile: OpenWritable = async (path, flags) => {
  const file = await open(path, flags)
  // Opened at the first write that can use it; null where the file system refuses it.
  let direct: Promise<FileHandle | null> | undefined
  let directUsable = true
  const writeDirect = async (data: Uint8Array, position: number): Promise<boolean> => {
    direct ??= open(path, constants.O_WRONLY | constants.O_DIRECT).catch(() => null)
    const handle = await direct
    if (handle === null || !directUsable) return false
    try {
      await writeAll(handle, data, position)
      return true
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err
      directUsable = false // this file system wants other alignment: the page cache from now on
      return false
    }
  }
  return {
    async write(data, position) {
      const start = Math.ceil(position / DIRECT_ALIGN) * DIRECT_ALIGN
      const end = Math.floor((position + data.length) / DIRECT_ALIGN) * DIRECT_ALIGN
      const skip = start - position
      if (
        directUsable &&
        end > start &&
        alignedMemory.has(data.buffer) &&
        (data.byteOffset + skip) % DIRECT_ALIGN === 0 &&
        (await writeDirect(data.subarray(skip, skip + end - start), start))
      ) {
        if (skip > 0) await writeAll(file, data.subarray(0, skip), position)
        if (position + data.length > end) await writeAll(file, data.subarray(end - position), end)
        return
      }
      await writeAll(file, data, position)
    },
    writev: (data, position) => file.writev(data, position),
    sync: () => file.sync(),
    close: async () => {
      await file.close()
      await (await direct)?.close()
    },
  }
}

async function writeAll(handle: FileHandle, data: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < data.length; ) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, position + done)
    done += bytesWritten
  }
}
