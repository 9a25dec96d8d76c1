// Writes substrate-tiny to a path and describes it as the model store would (real digest,
// details read from the GGUF header), for tests that drive the runtime without a store.

import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { writeTinyModel } from '../../src/models/builtin.ts'
import { readModelDetails } from '../../src/models/gguf-info.ts'
import type { ModelRecord } from '../../src/models/types.ts'

export async function writeTinyModelRecord(path: string, name = 'tiny:latest'): Promise<ModelRecord> {
  await writeTinyModel(path)
  return modelRecordOf(path, name)
}

/** Describes a GGUF file already on disk as the model store would. */
export async function modelRecordOf(path: string, name: string): Promise<ModelRecord> {
  const bytes = readFileSync(path)
  return {
    name,
    digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}`,
    size: bytes.length,
    path,
    modifiedAt: new Date().toISOString(),
    details: await readModelDetails(path),
  }
}
