import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { SubstrateError } from '../../src/errors.ts'
import {
  checkFits,
  detectHardware,
  estimateModelMemory,
  formatBytes,
  type HardwareInfo,
} from '../../src/hardware/detect.ts'

const GiB = 1024 ** 3
const gpuKinds = ['cuda', 'vulkan', 'metal', 'none']

let dir: string
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'substrate-hardware-'))
})
after(() => {
  rmSync(dir, { recursive: true, force: true })
})

function fakeHardware(memoryFree: number, gpu: HardwareInfo['gpu']): HardwareInfo {
  return {
    cpu: { model: 'test', cores: 4, physicalCores: 2, features: [] },
    memory: { totalBytes: 2 * memoryFree, freeBytes: memoryFree },
    gpu,
    disk: { path: '/', freeBytes: 100 * GiB, totalBytes: 200 * GiB },
    os: { platform: 'linux', release: 'test', arch: 'x64' },
  }
}

describe('detectHardware', () => {
  test('reports sane numbers for this machine', async () => {
    const hw = await detectHardware({ home: dir })
    assert.ok(hw.cpu.cores >= 1)
    assert.ok(hw.cpu.physicalCores >= 1 && hw.cpu.physicalCores <= hw.cpu.cores)
    assert.ok(hw.cpu.model.length > 0)
    for (const f of hw.cpu.features) assert.ok(['avx', 'avx2', 'avx512f', 'fma', 'f16c'].includes(f), f)
    assert.ok(hw.memory.totalBytes > 0)
    assert.ok(hw.memory.freeBytes > 0 && hw.memory.freeBytes <= hw.memory.totalBytes)
    assert.ok(hw.disk.freeBytes > 0 && hw.disk.freeBytes <= hw.disk.totalBytes)
    assert.equal(hw.os.platform, process.platform)
    assert.equal(hw.os.arch, process.arch)
  })

  test('without probeGpu the GPU is reported as none', async () => {
    const hw = await detectHardware({ home: dir })
    assert.deepEqual(hw.gpu, { kind: 'none', vramBytes: 0, vramFreeBytes: 0 })
  })

  test('measures the disk of the nearest existing parent when home does not exist yet', async () => {
    const hw = await detectHardware({ home: join(dir, 'not', 'yet', 'created') })
    assert.equal(hw.disk.path, dir)
    assert.ok(hw.disk.freeBytes > 0)
  })

  test('the GPU probe never throws and returns a known kind', async () => {
    const { gpu } = await detectHardware({ home: dir, probeGpu: true, gpuTimeoutMs: 30_000 })
    assert.ok(gpuKinds.includes(gpu.kind), gpu.kind)
    assert.ok(gpu.vramBytes >= 0 && gpu.vramFreeBytes >= 0)
    if (gpu.kind === 'none') assert.equal(gpu.vramBytes, 0)
  })

  test('a GPU probe that exceeds its timeout reports no GPU', async () => {
    const { gpu } = await detectHardware({ home: dir, probeGpu: true, gpuTimeoutMs: 1 })
    assert.equal(gpu.kind, 'none')
  })
})

describe('estimateModelMemory', () => {
  const base = { fileSize: 2 * GiB, contextLength: 4096, parallel: 1 }

  test('is at least the file size', () => {
    assert.ok(estimateModelMemory(base) > base.fileSize)
  })

  test('grows with parallel sequences', () => {
    assert.ok(estimateModelMemory({ ...base, parallel: 4 }) > estimateModelMemory(base))
  })

  test('grows with context length', () => {
    assert.ok(estimateModelMemory({ ...base, contextLength: 8192 }) > estimateModelMemory(base))
  })

  test('uses the given shape for the KV cache', () => {
    const small = estimateModelMemory({ ...base, layers: 2, embeddingLength: 256 })
    const large = estimateModelMemory({ ...base, layers: 32, embeddingLength: 4096 })
    // 32 layers × 4096 wide × 4096 tokens × K and V × f16 = 2 GiB of KV cache.
    assert.ok(large - small > 1.9 * GiB)
  })
})

describe('checkFits', () => {
  test('refuses an absurd load with E_INSUFFICIENT_MEMORY in human units', async () => {
    const hw = await detectHardware({ home: dir })
    try {
      checkFits(hw, 1024 ** 5)
      assert.fail('expected E_INSUFFICIENT_MEMORY')
    } catch (err) {
      assert.ok(err instanceof SubstrateError)
      assert.equal(err.code, 'E_INSUFFICIENT_MEMORY')
      assert.match(err.message, /needs about 1 PiB of memory but only [\d.]+ [KMGT]iB free/)
      assert.ok(err.hint?.includes('runtime.contextSize'))
    }
  })

  test('accepts a small load', async () => {
    const hw = await detectHardware({ home: dir })
    assert.doesNotThrow(() => checkFits(hw, 1024 * 1024))
  })

  test('counts free VRAM on top of RAM for a discrete GPU', () => {
    const hw = fakeHardware(GiB, { kind: 'cuda', name: 'test', vramBytes: 8 * GiB, vramFreeBytes: 8 * GiB })
    assert.doesNotThrow(() => checkFits(hw, 6 * GiB))
    assert.throws(() => checkFits(hw, 10 * GiB), /1 GiB RAM \+ 8 GiB VRAM/)
  })

  test('does not count unified metal memory twice', () => {
    const hw = fakeHardware(8 * GiB, { kind: 'metal', vramBytes: 8 * GiB, vramFreeBytes: 8 * GiB })
    assert.doesNotThrow(() => checkFits(hw, 7 * GiB))
    assert.throws(() => checkFits(hw, 12 * GiB), { code: 'E_INSUFFICIENT_MEMORY' })
  })
})

describe('formatBytes', () => {
  test('uses binary units with at most one decimal', () => {
    const cases: Array<[number, string]> = [
      [0, '0 B'],
      [1023, '1023 B'],
      [1536, '1.5 KiB'],
      [4 * GiB, '4 GiB'],
      [150.26 * 1024 ** 2, '150 MiB'],
    ]
    for (const [n, text] of cases) assert.equal(formatBytes(n), text)
  })
})
