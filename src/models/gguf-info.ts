// Reads and validates a GGUF file's header: the boundary check for every model that
// enters the store. A file that is not GGUF, is truncated, or whose tensors would lie
// outside the file is refused here with E_INVALID_MODEL_FILE, before llama.cpp ever maps
// it. Only the header is read (it grows the read window until the header fits), so a
// multi-gigabyte model costs a few megabytes of I/O.

import { open } from 'node:fs/promises'
import { basename } from 'node:path'
import { SubstrateError } from '../errors.ts'
import { GGUF_MAGIC } from './gguf-writer.ts'
import type { ModelDetails } from './types.ts'

type Scalar = number | boolean | string

export interface GgufTensorInfo {
  name: string
  dims: number[]
  type: number
  /** relative to the start of the data section */
  offset: number
  byteSize: number
  elements: number
}

export interface GgufHeader {
  version: number
  /** Scalar and string metadata; arrays are skipped (their length is kept as a number). */
  metadata: Map<string, Scalar>
  tensors: GgufTensorInfo[]
  dataOffset: number
  fileSize: number
}

// ggml_type id → [name, elements per block, bytes per block], from ggml.h / ggml.c.
const GGML_TYPES: Record<number, readonly [string, number, number]> = {
  0: ['F32', 1, 4],
  1: ['F16', 1, 2],
  2: ['Q4_0', 32, 18],
  3: ['Q4_1', 32, 20],
  6: ['Q5_0', 32, 22],
  7: ['Q5_1', 32, 24],
  8: ['Q8_0', 32, 34],
  9: ['Q8_1', 32, 36],
  10: ['Q2_K', 256, 84],
  11: ['Q3_K', 256, 110],
  12: ['Q4_K', 256, 144],
  13: ['Q5_K', 256, 176],
  14: ['Q6_K', 256, 210],
  15: ['Q8_K', 256, 292],
  16: ['IQ2_XXS', 256, 66],
  17: ['IQ2_XS', 256, 74],
  18: ['IQ3_XXS', 256, 98],
  19: ['IQ1_S', 256, 50],
  20: ['IQ4_NL', 32, 18],
  21: ['IQ3_S', 256, 110],
  22: ['IQ2_S', 256, 82],
  23: ['IQ4_XS', 256, 136],
  24: ['I8', 1, 1],
  25: ['I16', 1, 2],
  26: ['I32', 1, 4],
  27: ['I64', 1, 8],
  28: ['F64', 1, 8],
  29: ['IQ1_M', 256, 56],
  30: ['BF16', 1, 2],
  34: ['TQ1_0', 256, 54],
  35: ['TQ2_0', 256, 66],
  39: ['MXFP4', 32, 17],
}

// llama_ftype (general.file_type) → the name users know, from llama.h.
const FILE_TYPES: Record<number, string> = {
  0: 'F32',
  1: 'F16',
  2: 'Q4_0',
  3: 'Q4_1',
  7: 'Q8_0',
  8: 'Q5_0',
  9: 'Q5_1',
  10: 'Q2_K',
  11: 'Q3_K_S',
  12: 'Q3_K_M',
  13: 'Q3_K_L',
  14: 'Q4_K_S',
  15: 'Q4_K_M',
  16: 'Q5_K_S',
  17: 'Q5_K_M',
  18: 'Q6_K',
  19: 'IQ2_XXS',
  20: 'IQ2_XS',
  21: 'Q2_K_S',
  22: 'IQ3_XS',
  23: 'IQ3_XXS',
  24: 'IQ1_S',
  25: 'IQ4_NL',
  26: 'IQ3_S',
  27: 'IQ3_M',
  28: 'IQ2_S',
  29: 'IQ2_M',
  30: 'IQ4_XS',
  31: 'IQ1_M',
  32: 'BF16',
  36: 'TQ1_0',
  37: 'TQ2_0',
  38: 'MXFP4_MOE',
}

const MAX_HEADER_BYTES = 1 << 30
const MAX_DIMS = 4

class NeedMoreBytes extends Error {}

class Cursor {
  pos = 0
  readonly buf: Buffer
  readonly fileSize: number
  readonly invalid: (why: string) => SubstrateError

  constructor(buf: Buffer, fileSize: number, invalid: (why: string) => SubstrateError) {
    this.buf = buf
    this.fileSize = fileSize
    this.invalid = invalid
  }

  take(n: number): number {
    const at = this.pos
    if (at + n > this.buf.length) {
      if (at + n > this.fileSize) throw this.invalid('the file ends inside its header (truncated?)')
      throw new NeedMoreBytes()
    }
    this.pos += n
    return at
  }

  u32(): number {
    return this.buf.readUInt32LE(this.take(4))
  }

  u64(what: string): number {
    const value = this.buf.readBigUInt64LE(this.take(8))
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw this.invalid(`${what} is impossibly large (${value})`)
    return Number(value)
  }

  /** A count of items each at least `minBytes` long: bounded by what the file can hold. */
  count(what: string, minBytes: number): number {
    const n = this.u64(what)
    if (n * minBytes > this.fileSize - this.pos)
      throw this.invalid(`${what} (${n}) does not fit in the file (truncated?)`)
    return n
  }

  string(): string {
    const length = this.count('a string length', 1)
    const at = this.take(length)
    return this.buf.toString('utf8', at, at + length)
  }

  value(type: number): Scalar {
    switch (type) {
      case 0:
        return this.buf.readUInt8(this.take(1))
      case 1:
        return this.buf.readInt8(this.take(1))
      case 2:
        return this.buf.readUInt16LE(this.take(2))
      case 3:
        return this.buf.readInt16LE(this.take(2))
      case 4:
        return this.u32()
      case 5:
        return this.buf.readInt32LE(this.take(4))
      case 6:
        return this.buf.readFloatLE(this.take(4))
      case 7:
        return this.buf.readUInt8(this.take(1)) !== 0
      case 8:
        return this.string()
      case 9: {
        const itemType = this.u32()
        const n = this.count('an array length', itemType === 8 ? 8 : 1)
        for (let i = 0; i < n; i++) this.value(itemType)
        return n
      }
      case 10:
        return Number(this.buf.readBigUInt64LE(this.take(8)))
      case 11:
        return Number(this.buf.readBigInt64LE(this.take(8)))
      case 12:
        return this.buf.readDoubleLE(this.take(8))
      default:
        throw this.invalid(`unknown metadata value type ${type}`)
    }
  }
}

function parseHeader(buf: Buffer, fileSize: number, invalid: (why: string) => SubstrateError): GgufHeader {
  const c = new Cursor(buf, fileSize, invalid)
  const magic = c.u32()
  if (magic !== GGUF_MAGIC) {
    throw invalid(`not a GGUF file (it starts with 0x${buf.subarray(0, 4).toString('hex')}, not "GGUF")`)
  }
  const version = c.u32()
  if (version !== 2 && version !== 3) {
    const hint = version > 0xffff ? ' (a big-endian file?)' : ''
    throw invalid(`GGUF version ${version} is not supported${hint}: only versions 2 and 3 are`)
  }
  const tensorCount = c.count('the tensor count', 24)
  const metadataCount = c.count('the metadata count', 12)
  const metadata = new Map<string, Scalar>()
  for (let i = 0; i < metadataCount; i++) {
    const key = c.string()
    metadata.set(key, c.value(c.u32()))
  }
  const raw: Array<Omit<GgufTensorInfo, 'byteSize' | 'elements'>> = []
  for (let i = 0; i < tensorCount; i++) {
    const name = c.string()
    const nDims = c.u32()
    if (nDims < 1 || nDims > MAX_DIMS) throw invalid(`tensor ${name} has ${nDims} dimensions`)
    const dims: number[] = []
    for (let d = 0; d < nDims; d++) dims.push(c.u64(`a dimension of tensor ${name}`))
    raw.push({ name, dims, type: c.u32(), offset: c.u64(`the offset of tensor ${name}`) })
  }
  const alignment = metadata.get('general.alignment') ?? 32
  if (typeof alignment !== 'number' || alignment < 1 || (alignment & (alignment - 1)) !== 0) {
    throw invalid(`general.alignment ${String(alignment)} is not a power of two`)
  }
  const dataOffset = Math.ceil(c.pos / alignment) * alignment
  const dataBytes = fileSize - dataOffset
  const tensors = raw.map((t) => {
    const layout = GGML_TYPES[t.type]
    if (layout === undefined) throw invalid(`tensor ${t.name} has unknown type ${t.type}`)
    const [typeName, blockElements, blockBytes] = layout
    const elements = t.dims.reduce((a, b) => a * b, 1)
    if (!Number.isSafeInteger(elements)) throw invalid(`tensor ${t.name} is impossibly large`)
    if ((t.dims[0] ?? 0) % blockElements !== 0) {
      throw invalid(`tensor ${t.name} (${typeName}) has a row length not divisible by ${blockElements}`)
    }
    const byteSize = (elements / blockElements) * blockBytes
    if (t.offset % alignment !== 0) throw invalid(`tensor ${t.name} is not aligned to ${alignment} bytes`)
    if (t.offset + byteSize > dataBytes) {
      throw invalid(
        `tensor ${t.name} needs bytes up to ${dataOffset + t.offset + byteSize} but the file has ${fileSize} (truncated?)`,
      )
    }
    return { ...t, byteSize, elements }
  })
  return { version, metadata, tensors, dataOffset, fileSize }
}

/** Reads and validates a GGUF header. `label` names the file in errors (default: its base name). */
export async function readGgufHeader(path: string, label = basename(path)): Promise<GgufHeader> {
  const invalid = (why: string) =>
    new SubstrateError('E_INVALID_MODEL_FILE', `${label} is not a valid model file: ${why}`, {
      hint: 'check that the file is a complete GGUF model (re-download it if it was cut short)',
    })
  const file = await open(path, 'r')
  try {
    const { size } = await file.stat()
    let window = Math.min(size, 1 << 20)
    for (;;) {
      const buf = Buffer.alloc(window)
      const { bytesRead } = await file.read(buf, 0, window, 0)
      try {
        return parseHeader(buf.subarray(0, bytesRead), size, invalid)
      } catch (err) {
        if (!(err instanceof NeedMoreBytes)) throw err
        if (window >= MAX_HEADER_BYTES) throw invalid('its header is larger than 1 GiB')
        window = Math.min(size, window * 4, MAX_HEADER_BYTES)
      }
    }
  } finally {
    await file.close()
  }
}

/** "25.7M", "1.2B": the parameter count in the short form model lists use. */
export function formatParameterCount(n: number): string {
  const units: Array<[number, string]> = [
    [1e12, 'T'],
    [1e9, 'B'],
    [1e6, 'M'],
    [1e3, 'K'],
  ]
  for (const [scale, unit] of units) {
    if (n >= scale * 0.9995) return `${(n / scale).toFixed(1)}${unit}`
  }
  return String(n)
}

function quantizationOf(header: GgufHeader): string {
  const fileType = header.metadata.get('general.file_type')
  if (typeof fileType === 'number' && FILE_TYPES[fileType] !== undefined) return FILE_TYPES[fileType]
  // No (known) file type: name the type that holds most of the weight matrices' elements.
  const elementsByType = new Map<number, number>()
  for (const t of header.tensors) {
    if (t.dims.length < 2) continue
    elementsByType.set(t.type, (elementsByType.get(t.type) ?? 0) + t.elements)
  }
  const [dominant] = [...elementsByType].sort((a, b) => b[1] - a[1])
  return dominant === undefined ? 'unknown' : (GGML_TYPES[dominant[0]]?.[0] ?? 'unknown')
}

export async function readModelDetails(path: string, label?: string): Promise<ModelDetails> {
  const header = await readGgufHeader(path, label)
  const name = label ?? basename(path)
  const architecture = header.metadata.get('general.architecture')
  if (typeof architecture !== 'string' || architecture === '') {
    throw new SubstrateError(
      'E_INVALID_MODEL_FILE',
      `${name} is not a valid model file: no general.architecture`,
    )
  }
  if (header.tensors.length === 0) {
    throw new SubstrateError('E_INVALID_MODEL_FILE', `${name} has no tensors (a vocabulary-only file?)`)
  }
  const parameterCount = header.tensors.reduce((sum, t) => sum + t.elements, 0)
  const contextLength = header.metadata.get(`${architecture}.context_length`)
  const chatTemplate = header.metadata.get('tokenizer.chat_template')
  return {
    format: 'gguf',
    architecture,
    family: architecture,
    parameterCount,
    parameterSize: formatParameterCount(parameterCount),
    quantization: quantizationOf(header),
    // 0 when the file does not say: the runtime then picks its own default.
    contextLength: typeof contextLength === 'number' ? contextLength : 0,
    chatTemplate: typeof chatTemplate === 'string' ? chatTemplate : undefined,
  }
}
