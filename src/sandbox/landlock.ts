// The Landlock helper: src/sandbox/landlock-exec.c, compiled by the project's own setup
// (scripts/setup-system.ts) into node_modules/.cache/substrate/, rebuilt when the source
// changes. bwrap.ts execs it inside the sandbox right before the runner (Node has no
// syscall access, and a Landlock-restricted process could no longer mount, so the ruleset
// is made after bwrap's mounts).

import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = dirname(dirname(dirname(fileURLToPath(import.meta.url))))
export const LANDLOCK_SOURCE = join(root, 'src', 'sandbox', 'landlock-exec.c')
export const LANDLOCK_HELPER = join(root, 'node_modules', '.cache', 'substrate', 'landlock-exec')
const STAMP = `${LANDLOCK_HELPER}.sha256`

function sourceHash(): string | undefined {
  try {
    return createHash('sha256').update(readFileSync(LANDLOCK_SOURCE)).digest('hex')
  } catch {
    return undefined
  }
}

/** The compiled helper when it is built from the current source; undefined otherwise. */
export function landlockHelper(): string | undefined {
  const hash = sourceHash()
  if (hash === undefined || !existsSync(LANDLOCK_HELPER)) return undefined
  try {
    return readFileSync(STAMP, 'utf8').trim() === hash ? LANDLOCK_HELPER : undefined
  } catch {
    return undefined
  }
}

export type BuildResult = { ok: true; path: string; built: boolean } | { ok: false; reason: string }

/** Compiles the helper if it is missing or stale: static-pie where the toolchain can, else plain. */
export function buildLandlockHelper(): BuildResult {
  const existing = landlockHelper()
  if (existing !== undefined) return { ok: true, path: existing, built: false }
  const hash = sourceHash()
  if (hash === undefined) return { ok: false, reason: `${LANDLOCK_SOURCE} is missing` }
  const cc = ['cc', 'gcc', 'clang'].find((c) => spawnSync(c, ['--version'], { stdio: 'ignore' }).status === 0)
  if (cc === undefined) return { ok: false, reason: 'no C compiler (cc, gcc or clang) on PATH' }
  mkdirSync(dirname(LANDLOCK_HELPER), { recursive: true, mode: 0o755 })
  const tmp = `${LANDLOCK_HELPER}.${process.pid}.tmp`
  let errors = ''
  for (const flags of [['-O2', '-static-pie'], ['-O2']]) {
    const r = spawnSync(cc, [...flags, '-Wall', '-Wextra', '-o', tmp, LANDLOCK_SOURCE], { encoding: 'utf8' })
    if (r.status === 0) {
      chmodSync(tmp, 0o755)
      renameSync(tmp, LANDLOCK_HELPER)
      writeFileSync(STAMP, `${hash}\n`, { mode: 0o644 })
      return { ok: true, path: LANDLOCK_HELPER, built: true }
    }
    errors = `${cc} ${flags.join(' ')}: ${(r.stderr || r.error?.message || '').trim()}`
  }
  rmSync(tmp, { force: true })
  return { ok: false, reason: errors }
}
