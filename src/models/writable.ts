// The file-writing seam of the model store: tests inject one that fails (ENOSPC) to check
// that a full disk leaves nothing half-written behind.

import { open } from 'node:fs/promises'

export interface WritableFile {
  write(data: Uint8Array, position: number): Promise<unknown>
  /** Several buffers in one system call, without copying them together first. */
  writev?(data: Uint8Array[], position: number): Promise<unknown>
  sync(): Promise<void>
  close(): Promise<void>
}
export type OpenWritable = (path: string, flags: 'w' | 'r+') => Promise<WritableFile>

export const openWritableFile: OpenWritable = async (path, flags) => {
  const file = await open(path, flags)
  return {
    write: (data, position) => file.write(data, 0, data.length, position),
    writev: (data, position) => file.writev(data, position),
    sync: () => file.sync(),
    close: () => file.close(),
  }
}
