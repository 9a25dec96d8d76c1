// What this machine can offer: cores, memory, GPU, disk. The scheduler uses it to decide
// whether a model can be loaded at all, `substrate doctor` prints it, and capacity gossip
// advertises it. Every probe is best effort: a missing /proc file or a failed GPU probe
// degrades to a conservative answer instead of an error.
import { readFileSync } from 'node:fs'
import { statfs } from 'node:fs/promises'
import os from 'node:os'
import { dirname, resolve } from 'node:path'
import { SubstrateError } from '../errors.ts'

export type GpuKind = 'cuda' | 'vulkan' | 'metal' | 'none'

export interface HardwareInfo {
  cpu: { model: string; cores: number; physicalCores: number; features: string[] }
  memory: { totalBytes: number; freeBytes: number }
  gpu: { kind: GpuKind; name?: string; vramBytes: number; vramFreeBytes: number }
  disk: { path: string; freeBytes: number; totalBytes: number }
  os: { platform: NodeJS.Platform; release: string; arch: string }
}

export interface DetectHardwareOptions {
  /** Load node-llama-cpp to look for a GPU. Slow (hundreds of ms), so off by default. */
  probeGpu?: boolean
  /** The Substrate home (models live there): its disk is measured. Defaults to $SUBSTRATE_HOME or ~/.substrate. */
  home?: string
  /** Give up on the GPU probe after this long and report no GPU. */
  gpuTimeoutMs?: number
}

// The SIMD extensions llama.cpp's CPU kernels are built around; their absence explains slowness.
const cpuFeatures = ['avx', 'avx2', 'avx512f', 'fma', 'f16c'] as const

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return undefined
  }
}

function detectCpu(): HardwareInfo['cpu'] {
  const cpuinfo = readText('/proc/cpuinfo') ?? ''
  const cores = Math.max(1, os.availableParallelism())
  const modelLine = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]
  const model = (modelLine ?? os.cpus()[0]?.model ?? 'unknown').trim() || 'unknown'
  // x86 lists "flags", arm lists "Features"; the first processor block speaks for all.
  const flagLine = /^(?:flags|Features)\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? ''
  const flags = new Set(flagLine.split(/\s+/))
  const features = cpuFeatures.filter((f) => flags.has(f))
  // Physical cores are distinct (package, core) pairs. Clamped to `cores` because an
  // affinity mask or container may let us use fewer than the machine has.
  const pairs = new Set<string>()
  for (const block of cpuinfo.split(/\n\s*\n/)) {
    const pkg = /^physical id\s*:\s*(\d+)/m.exec(block)?.[1]
    const core = /^core id\s*:\s*(\d+)/m.exec(block)?.[1]
    if (pkg !== undefined && core !== undefined) pairs.add(`${pkg}:${core}`)
  }
  const physicalCores = pairs.size > 0 ? Math.min(pairs.size, cores) : cores
  return { model, cores, physicalCores, features }
}

function detectMemory(): HardwareInfo['memory'] {
  let totalBytes = os.totalmem()
  let freeBytes = os.freemem()
  // MemAvailable counts reclaimable page cache, which MemFree (os.freemem) does not:
  // on a machine that has read a few models, MemFree alone looks nearly full.
  const available = /^MemAvailable:\s*(\d+)\s*kB$/m.exec(readText('/proc/meminfo') ?? '')?.[1]
  if (available !== undefined) freeBytes = Number(available) * 1024
  // Inside a container the cgroup limit, not the host's RAM, is what we can use (cgroup v2).
  const limit = Number(readText('/sys/fs/cgroup/memory.max')?.trim())
  const current = Number(readText('/sys/fs/cgroup/memory.current')?.trim())
  if (Number.isFinite(limit) && limit > 0 && limit < totalBytes) {
    totalBytes = limit
    if (Number.isFinite(current)) freeBytes = Math.min(freeBytes, Math.max(0, limit - current))
  }
  return { totalBytes, freeBytes: Math.min(freeBytes, totalBytes) }
}

async function detectDisk(path: string): Promise<HardwareInfo['disk']> {
  // The home dir may not exist yet on first run; the filesystem it will live on does.
  let current = resolve(path)
  for (;;) {
    try {
      const stats = await statfs(current)
      return { path: current, freeBytes: stats.bavail * stats.bsize, totalBytes: stats.blocks * stats.bsize }
    } catch (err) {
      const parent = dirname(current)
      if (parent === current) throw err
      current = parent
    }
  }
}

const noGpu: HardwareInfo['gpu'] = { kind: 'none', vramBytes: 0, vramFreeBytes: 0 }

async function probeGpu(timeoutMs: number): Promise<HardwareInfo['gpu']> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<HardwareInfo['gpu']>((done) => {
    timer = setTimeout(() => done(noGpu), timeoutMs)
    timer.unref()
  })
  const probe = (async (): Promise<HardwareInfo['gpu']> => {
    // Imported here, not at the top: loading the native addon costs ~0.3 s at startup.
    const { getLlama, LlamaLogLevel } = await import('node-llama-cpp')
    // build: 'never' so a probe can never turn into a multi-minute compile of llama.cpp.
    const llama = await getLlama({
      gpu: 'auto',
      build: 'never',
      progressLogs: false,
      logLevel: LlamaLogLevel.error,
    })
    try {
      if (llama.gpu === false) return noGpu
      const vram = await llama.getVramState()
      const name = (await llama.getGpuDeviceNames())[0]
      const gpu = { kind: llama.gpu, vramBytes: vram.total, vramFreeBytes: vram.free }
      return name === undefined ? gpu : { ...gpu, name }
    } finally {
      await llama.dispose()
    }
  })().catch(() => noGpu)
  try {
    return await Promise.race([probe, timeout])
  } finally {
    clearTimeout(timer)
  }
}

export async function detectHardware(options: DetectHardwareOptions = {}): Promise<HardwareInfo> {
  const home = options.home ?? process.env.SUBSTRATE_HOME ?? `${os.homedir()}/.substrate`
  const [disk, gpu] = await Promise.all([
    detectDisk(home),
    options.probeGpu === true ? probeGpu(options.gpuTimeoutMs ?? 15_000) : Promise.resolve(noGpu),
  ])
  return {
    cpu: detectCpu(),
    memory: detectMemory(),
    gpu,
    disk,
    os: { platform: os.platform(), release: os.release(), arch: os.arch() },
  }
}

export interface ModelMemoryInput {
  fileSize: number
  /** Context window per sequence, in tokens. */
  contextLength: number
  embeddingLength?: number
  layers?: number
  /** Sequences served at once; each has its own KV cache of contextLength tokens. */
  parallel: number
}

const MiB = 1024 * 1024

/**
 * Bytes needed to load a model and serve `parallel` sequences: the weights (mmapped, so
 * about the file size), an f16 K and V cache per layer, and runtime overhead. The KV cache
 * assumes no grouped-query attention, so it errs high for modern models — refusing a load
 * is cheaper than being killed by the OOM killer halfway through one.
 */
export function estimateModelMemory(input: ModelMemoryInput): number {
  const { fileSize, contextLength, parallel } = input
  // Without GGUF metadata, guess the shape from the size: ~0.56 bytes per weight at Q4,
  // weights ≈ 12·layers·width², and layers ≈ width/128 across the llama family.
  const params = fileSize / 0.56
  const width = input.embeddingLength ?? Math.max(64, Math.round(Math.cbrt((params * 128) / 12)))
  const layers = input.layers ?? Math.max(1, Math.round(width / 128))
  const kvCache = 2 * layers * contextLength * parallel * width * 2
  // Compute buffers and allocator slack: a fixed floor plus a share that grows with size.
  const overhead = 128 * MiB + 0.05 * (fileSize + kvCache)
  return Math.ceil(fileSize + kvCache + overhead)
}

/**
 * Throws E_INSUFFICIENT_MEMORY when `bytesNeeded` exceeds free RAM plus free VRAM. On
 * Apple silicon (metal) VRAM is the same memory as RAM, so it is not added twice.
 */
export function checkFits(hardware: HardwareInfo, bytesNeeded: number): void {
  const { freeBytes } = hardware.memory
  const { kind, vramFreeBytes } = hardware.gpu
  const available = kind === 'metal' ? Math.max(freeBytes, vramFreeBytes) : freeBytes + vramFreeBytes
  if (bytesNeeded <= available) return
  const parts =
    kind === 'none' || kind === 'metal'
      ? `${formatBytes(available)} free`
      : `${formatBytes(available)} free (${formatBytes(freeBytes)} RAM + ${formatBytes(vramFreeBytes)} VRAM)`
  throw new SubstrateError(
    'E_INSUFFICIENT_MEMORY',
    `this load needs about ${formatBytes(bytesNeeded)} of memory but only ${parts}`,
    {
      hint:
        'unload another model (substrate ps / stop), lower runtime.contextSize or runtime.parallel, ' +
        'or use a smaller quantisation of the model',
    },
  )
}

/** Binary units, as memory is sized: 1536 → "1.5 KiB". */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return String(n)
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let value = Math.abs(n)
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  const digits = unit === 0 || value >= 100 ? 0 : 1
  return `${n < 0 ? '-' : ''}${Number(value.toFixed(digits))} ${units[unit]}`
}
