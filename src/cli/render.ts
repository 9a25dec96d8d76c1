// How the CLI talks to a terminal: the output streams it writes to, tables, human sizes
// and durations, and the download progress bar. The shape of a command (its flags and
// help text) lives here too, because main.ts and every commands-*.ts module share it and
// main.ts loads those modules lazily: keeping the shared types in a leaf file avoids an
// import cycle.

import type { Client } from '../api/client.ts'
import { formatBytes } from '../hardware/detect.ts'

export { formatBytes }

export interface OutStream {
  write(text: string): unknown
  isTTY?: boolean
  columns?: number
}

export interface Io {
  stdout: OutStream
  stderr: OutStream
  stdin: NodeJS.ReadableStream & { isTTY?: boolean }
}

export interface FlagSpec {
  type: 'string' | 'boolean'
  short?: string
  /** the placeholder shown in help, e.g. "N" for `--name N` */
  value?: string
  help: string
}

export interface CommandContext {
  io: Io
  /** --json: print one machine-readable JSON document on stdout instead of text */
  json: boolean
  debug: boolean
  /** the global connection flags as given on the command line */
  connection: { host?: string; port?: string; home?: string; token?: string }
  /** a client for the daemon that flags, env and config.toml point at; never starts one */
  client(): Promise<Client>
  /** like client(), but first starts a daemon in the background when none answers */
  daemon(): Promise<Client>
}

export interface ParsedArgs {
  values: Record<string, string | boolean | undefined>
  positionals: string[]
}

export interface Command {
  usage: string
  /** what it does, in a few sentences */
  description: string
  examples: string[]
  /** environment variables that matter to this command, beyond the global ones */
  env?: string[]
  flags: Record<string, FlagSpec>
  /** how many positional arguments it takes; max undefined means any number */
  args: { min: number; max?: number }
  run(ctx: CommandContext, args: ParsedArgs): Promise<void>
}

export function writeJson(out: OutStream, value: unknown): void {
  out.write(`${JSON.stringify(value, null, 2)}\n`)
}

/** Left-aligned columns, like Ollama's tabwriter output; no trailing spaces. */
export function table(headers: string[], rows: string[][]): string {
  const all = [headers, ...rows]
  const widths = headers.map((_, i) => Math.max(...all.map((row) => (row[i] ?? '').length)))
  return all
    .map((row) => row.map((cell, i) => cell.padEnd(i === row.length - 1 ? 0 : (widths[i] ?? 0) + 4)).join(''))
    .map((line) => `${line.trimEnd()}\n`)
    .join('')
}

/** 0.000412 → "412µs", 1.5 → "1.5ms", 2345 → "2.35s", 125000 → "2m5s". */
export function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return String(ms)
  if (ms < 1) return `${Number((ms * 1000).toFixed(0))}µs`
  if (ms < 1000) return `${Number(ms.toFixed(ms < 10 ? 2 : 1))}ms`
  if (ms < 60_000) return `${Number((ms / 1000).toFixed(2))}s`
  const totalSeconds = Math.round(ms / 1000)
  const h = Math.floor(totalSeconds / 3600)
  const m = Math.floor((totalSeconds % 3600) / 60)
  const s = totalSeconds % 60
  return h > 0 ? `${h}h${m}m${s}s` : `${m}m${s}s`
}

export const formatNs = (ns: number): string => formatMs(ns / 1e6)

/** Whole seconds, rounded up: an ETA of "0s" while bytes are still missing would be a lie. */
export function formatEta(seconds: number): string {
  const s = Math.max(1, Math.ceil(seconds))
  if (s < 60) return `${s}s`
  const h = Math.floor(s / 3600)
  const m = Math.floor((s % 3600) / 60)
  return h > 0 ? `${h}h${m}m` : `${m}m${s % 60}s`
}

const plural = (n: number, unit: string) => `${n} ${unit}${n === 1 ? '' : 's'}`

function roughly(ms: number): string {
  const s = Math.floor(ms / 1000)
  if (s < 1) return 'less than a second'
  if (s < 60) return plural(s, 'second')
  if (s < 120) return 'about a minute'
  if (s < 3600) return plural(Math.floor(s / 60), 'minute')
  if (s < 7200) return 'about an hour'
  if (s < 86_400) return plural(Math.floor(s / 3600), 'hour')
  if (s < 14 * 86_400) return plural(Math.floor(s / 86_400), 'day')
  if (s < 60 * 86_400) return plural(Math.floor(s / (7 * 86_400)), 'week')
  if (s < 730 * 86_400) return plural(Math.floor(s / (30 * 86_400)), 'month')
  return plural(Math.floor(s / (365 * 86_400)), 'year')
}

export function timeAgo(iso: string, now = Date.now()): string {
  const t = Date.parse(iso)
  return Number.isNaN(t) ? iso : `${roughly(Math.max(0, now - t))} ago`
}

/** For `ps`: when an idle model will be unloaded. Ollama writes "forever" as a far-future date. */
export function timeUntil(iso: string, now = Date.now()): string {
  const t = Date.parse(iso)
  if (Number.isNaN(t)) return iso
  if (new Date(t).getUTCFullYear() > 2200) return 'Forever'
  if (t <= now) return 'Stopping...'
  return `${roughly(t - now)} from now`
}

export const shortDigest = (digest: string): string => digest.replace(/^sha256:/, '').slice(0, 12)

export interface ProgressUpdate {
  status: string
  total?: number
  completed?: number
}

/**
 * A download/import progress display on stderr. On a terminal one line is redrawn in place
 * (percent, bar, bytes, rate, ETA) at most ten times a second; anywhere else (a log, CI)
 * redrawing would make a mess, so it prints one line per 10% instead.
 */
export function createProgress(out: OutStream, now: () => number = Date.now) {
  const tty = out.isTTY === true
  let status: string | undefined
  let drawn = false
  let lastDraw = 0
  let lastDecile = -1
  let samples: Array<{ t: number; completed: number }> = []

  const finishLine = () => {
    if (drawn) out.write('\n')
    drawn = false
  }

  const rate = (): number | undefined => {
    const first = samples[0]
    const last = samples.at(-1)
    if (!first || !last || last.t - first.t < 200) return undefined
    return ((last.completed - first.completed) * 1000) / (last.t - first.t)
  }

  const draw = (total: number, completed: number) => {
    const fraction = total > 0 ? Math.min(1, completed / total) : 0
    const percent = `${Math.floor(fraction * 100)}%`.padStart(4)
    const bytesPerSecond = rate()
    const speed = bytesPerSecond === undefined ? '' : `${formatBytes(bytesPerSecond)}/s`
    const eta =
      bytesPerSecond && bytesPerSecond > 0 && completed < total
        ? formatEta((total - completed) / bytesPerSecond)
        : ''
    const label = status!.length > 30 ? `${status!.slice(0, 29)}…` : status!
    const tail = ` ${formatBytes(completed)}/${formatBytes(total)}  ${speed.padStart(11)}  ${eta}`
    const room = (out.columns ?? 80) - label.length - percent.length - tail.length - 4
    const width = Math.max(10, Math.min(40, room))
    const filled = Math.round(fraction * width)
    out.write(`\r${label} ${percent} ▕${'█'.repeat(filled)}${' '.repeat(width - filled)}▏${tail}\x1b[K`)
    drawn = true
  }

  return {
    update(e: ProgressUpdate): void {
      const t = now()
      if (e.status !== status) {
        finishLine()
        status = e.status
        lastDecile = -1
        samples = []
        lastDraw = 0
        if (e.total === undefined) {
          out.write(`${e.status}\n`)
          return
        }
      }
      if (e.total === undefined || e.completed === undefined) return
      samples.push({ t, completed: e.completed })
      // A five-second window: fast enough to follow a changing link, smooth enough to read.
      while (samples.length > 2 && t - samples[0]!.t > 5000) samples.shift()
      const complete = e.completed >= e.total
      if (tty) {
        if (complete || t - lastDraw >= 100) {
          draw(e.total, e.completed)
          lastDraw = t
        }
        return
      }
      const decile = e.total > 0 ? Math.floor((Math.min(e.completed, e.total) / e.total) * 10) : 10
      if (decile > lastDecile) {
        lastDecile = decile
        out.write(`${e.status}: ${decile * 10}% (${formatBytes(e.completed)}/${formatBytes(e.total)})\n`)
      }
    },
    /** ends a bar drawn in place so that what follows starts on its own line */
    done(): void {
      finishLine()
    },
  }
}
