// What every benchmark records next to its numbers: the machine, how busy it was, and the
// small statistics the scripts share. Numbers without the machine they came from are noise.

import { readFileSync, readlinkSync } from 'node:fs'
import { createServer } from 'node:net'
import { availableParallelism, totalmem } from 'node:os'

export interface MachineInfo {
  cpu: string
  cores: number
  memoryGiB: number
  gpu: string
  node: string
  nodeLlamaCpp: string
}

export function machineInfo(): MachineInfo {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8')
  const cpu = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim() ?? 'unknown'
  const pkg = JSON.parse(
    readFileSync(new URL('../node_modules/node-llama-cpp/package.json', import.meta.url), 'utf8'),
  ) as {
    version: string
  }
  return {
    cpu,
    cores: availableParallelism(),
    memoryGiB: Math.round(totalmem() / 1024 ** 3),
    gpu: 'none',
    node: process.version,
    nodeLlamaCpp: pkg.version,
  }
}

/** The 1-, 5- and 15-minute load averages: other work on a 2-core machine skews every number. */
export function loadAverage(): string {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** Rounds for printing: ratios to 3 decimals, rates and times to 1. */
export const round = (value: number, digits = 1): number => {
  const f = 10 ** digits
  return Math.round(value * f) / f
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      const port = typeof address === 'object' && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** VmRSS of a process in MiB, from /proc/<pid>/status. */
export function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = Number(/^VmRSS:\s*(\d+)\s*kB/m.exec(status)?.[1] ?? Number.NaN)
  return kb / 1024
}

/**
 * Where a process's resident memory is: its own anonymous pages (heap, stacks, JIT code),
 * file-backed pages (mostly the node binary's code and read-only data, shared with every
 * Node process through the page cache), and of those the file pages mapped 2 MiB at a time
 * (large page-cache folios: touching one byte of one maps all of it). Pss splits shared
 * pages among the processes mapping them. All MiB.
 */
export interface MemorySplit {
  rssMiB: number
  anonMiB: number
  fileMiB: number
  filePmdMappedMiB: number
  pssMiB: number
}

export function memorySplit(pid: number): MemorySplit {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')
  const kb = (text: string, key: string) =>
    Number(new RegExp(`^${key}:\\s*(\\d+)\\s*kB`, 'm').exec(text)?.[1] ?? Number.NaN)
  const mib = (k: number) => round(k / 1024)
  return {
    rssMiB: mib(kb(status, 'VmRSS')),
    anonMiB: mib(kb(status, 'RssAnon')),
    fileMiB: mib(kb(status, 'RssFile')),
    filePmdMappedMiB: mib(kb(rollup, 'FilePmdMapped')),
    pssMiB: mib(kb(rollup, 'Pss')),
  }
}

/** VmHWM (peak resident memory) of a process in MiB. */
export function peakRssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/^VmHWM:\s*(\d+)\s*kB/m.exec(status)?.[1] ?? Number.NaN) / 1024
}

/**
 * CPU time (user + system) a process, or one of its threads, has used so far, in ms.
 * The main thread of a process is the task whose id is the pid.
 */
export function cpuMs(pid: number, tid?: number): number {
  const path = tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`
  const stat = readFileSync(path, 'utf8')
  // fields after "(comm)": state is [0], utime [11], stime [12], in clock ticks (USER_HZ 100)
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100
}

/**
 * The node process that really runs a runner: the pid the daemon reports may be a sandbox
 * wrapper (bwrap, prlimit, runsc), so this walks its descendants for the deepest one whose
 * executable is node. Falls back to the pid itself.
 */
export function nodeDescendant(pid: number): number {
  let found = pid
  const queue = [pid]
  while (queue.length > 0) {
    const p = queue.shift()!
    try {
      if (readlinkSync(`/proc/${p}/exe`).endsWith('/node')) found = p
      const children = readFileSync(`/proc/${p}/task/${p}/children`, 'utf8').trim()
      if (children !== '') queue.push(...children.split(' ').map(Number))
    } catch {
      // gone, or not ours to read
    }
  }
  return found
}
