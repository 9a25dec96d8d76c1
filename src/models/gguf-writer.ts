// A minimal GGUF v3 writer: enough to produce llama-architecture models that llama.cpp
// loads. Tensors are produced lazily by a callback so a large model never has to sit in
// memory twice; the file is written to a temp path and renamed, so a crash never leaves a
// half-written model behind.

import { once } from 'node:events'
import { createWriteStream } from 'node:fs'
import { rename, rm } from 'node:fs/promises'

export const GGUF_MAGIC = 0x46554747 // "GGUF" little-endian
const ALIGNMENT = 32

export const GgufValueType = {
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
} as const

export type GgufTensorType = 'F32' | 'F16'
const tensorTypeId: Record<GgufTensorType, number> = { F32: 0, F16: 1 }
const tensorTypeBytes: Record<GgufTensorType, number> = { F32: 4, F16: 2 }

export type GgufValue =
  | { type: 'u32'; value: number }
  | { type: 'i32'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'string[]'; value: readonly string[] }
  | { type: 'f32[]'; value: readonly number[] }
  | { type: 'i32[]'; value: readonly number[] }

export interface GgufTensorSpec {
  name: string
  /** ggml order: ne[0] is the fastest-moving (input) dimension. */
  shape: readonly number[]
  type: GgufTensorType
  /** Fills `out` (length = product of shape) with the tensor's values, row-major in ggml order. */
  fill: (out: Float32Array) => void
}

class ByteSink {
  private chunks: Buffer[] = []
  length = 0

  push(buf: Buffer): void {
    this.chunks.push(buf)
    this.length += buf.length
  }

  u32(v: number): void {
    const b = Buffer.alloc(4)
    b.writeUInt32LE(v)
    this.push(b)
  }

  i32(v: number): void {
    const b = Buffer.alloc(4)
    b.writeInt32LE(v)
    this.push(b)
  }

  u64(v: number): void {
    const b = Buffer.alloc(8)
    b.writeBigUInt64LE(BigInt(v))
    this.push(b)
  }

  f32(v: number): void {
    const b = Buffer.alloc(4)
    b.writeFloatLE(v)
    this.push(b)
  }

  string(s: string): void {
    const bytes = Buffer.from(s, 'utf8')
    this.u64(bytes.length)
    this.push(bytes)
  }

  pad(): void {
    const rest = this.length % ALIGNMENT
    if (rest !== 0) this.push(Buffer.alloc(ALIGNMENT - rest))
  }

  concat(): Buffer {
    return Buffer.concat(this.chunks)
  }
}

function writeValue(sink: ByteSink, v: GgufValue): void {
  switch (v.type) {
    case 'u32':
      sink.u32(GgufValueType.UINT32)
      sink.u32(v.value)
      return
    case 'i32':
      sink.u32(GgufValueType.INT32)
      sink.i32(v.value)
      return
    case 'f32':
      sink.u32(GgufValueType.FLOAT32)
      sink.f32(v.value)
      return
    case 'bool':
      sink.u32(GgufValueType.BOOL)
      sink.push(Buffer.from([v.value ? 1 : 0]))
      return
    case 'string':
      sink.u32(GgufValueType.STRING)
      sink.string(v.value)
      return
    case 'string[]':
      sink.u32(GgufValueType.ARRAY)
      sink.u32(GgufValueType.STRING)
      sink.u64(v.value.length)
      for (const s of v.value) sink.string(s)
      return
    case 'f32[]':
      sink.u32(GgufValueType.ARRAY)
      sink.u32(GgufValueType.FLOAT32)
      sink.u64(v.value.length)
      for (const x of v.value) sink.f32(x)
      return
    case 'i32[]':
      sink.u32(GgufValueType.ARRAY)
      sink.u32(GgufValueType.INT32)
      sink.u64(v.value.length)
      for (const x of v.value) sink.i32(x)
      return
  }
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1)
}

function encodeTensor(spec: GgufTensorSpec): Buffer {
  const values = new Float32Array(elementCount(spec.shape))
  spec.fill(values)
  if (spec.type === 'F32') return Buffer.from(values.buffer, values.byteOffset, values.byteLength)
  const half = new Float16Array(values)
  return Buffer.from(half.buffer, half.byteOffset, half.byteLength)
}

/** Writes a GGUF v3 file atomically (temp file + rename). */
export async function writeGguf(
  path: string,
  metadata: ReadonlyArray<readonly [string, GgufValue]>,
  tensors: readonly GgufTensorSpec[],
): Promise<void> {
  const header = new ByteSink()
  header.u32(GGUF_MAGIC)
  header.u32(3)
  header.u64(tensors.length)
  header.u64(metadata.length)
  for (const [key, value] of metadata) {
    header.string(key)
    writeValue(header, value)
  }
  let offset = 0
  for (const t of tensors) {
    header.string(t.name)
    header.u32(t.shape.length)
    for (const dim of t.shape) header.u64(dim)
    header.u32(tensorTypeId[t.type])
    header.u64(offset)
    const bytes = elementCount(t.shape) * tensorTypeBytes[t.type]
    offset += Math.ceil(bytes / ALIGNMENT) * ALIGNMENT
  }
  header.pad()

  const tmp = `${path}.partial-${process.pid}`
  const out = createWriteStream(tmp)
  try {
    const write = async (buf: Buffer) => {
      if (!out.write(buf)) await once(out, 'drain')
    }
    await write(header.concat())
    for (const t of tensors) {
      const data = encodeTensor(t)
      await write(data)
      const rest = data.length % ALIGNMENT
      if (rest !== 0) await write(Buffer.alloc(ALIGNMENT - rest))
    }
    out.end()
    await once(out, 'finish')
    await rename(tmp, path)
  } catch (err) {
    out.destroy()
    await rm(tmp, { force: true })
    throw err
  }
}
