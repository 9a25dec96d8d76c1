// Which inference engine a runner drives, and building the fast one.
//
// Two engines run a model inside the runner process (runner-main.ts), behind the same
// JSON-lines protocol and the same sandbox:
// - `node-llama-cpp`: in the runner's own process, from the package's prebuilt binaries.
//   Always there, but its CPU build has no OpenMP and no persistent thread pool, and each
//   token crosses into JavaScript: on the bench model it decodes at 0.2–0.8× of llama.cpp's
//   own server (BENCHMARKS.md).
// - `llama-server`: llama.cpp's own server (the way Ollama runs models), built natively for
//   this CPU from the exact llama.cpp source node-llama-cpp ships (its git bundle), started by
//   the runner inside the sandbox on a unix socket. Tokenizing and chat templates stay in the
//   runner (node-llama-cpp, vocabulary only), so both engines feed a model the same tokens —
//   which spot checks (teacher-forced scoring) rely on.
//
// `auto` (the default) uses llama-server when a build for this llama.cpp version is cached and
// node-llama-cpp until then; `substrate serve` starts that build in the background (niced,
// incremental: an interrupted build continues where it stopped).

import { spawn } from 'node:child_process'
import {
  accessSync,
  constants,
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
} from 'node:fs'
import { open } from 'node:fs/promises'
import { availableParallelism, homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { SubstrateError } from '../errors.ts'
import type { Logger } from '../logger.ts'
import { findTool } from '../sandbox/bwrap.ts'

export type EngineSetting = 'auto' | 'llama-server' | 'node-llama-cpp'
export type Engine = { kind: 'node-llama-cpp' } | { kind: 'llama-server'; path: string }

function llamaPackageDir(): string {
  // .../node_modules/node-llama-cpp/dist/index.js → .../node_modules/node-llama-cpp
  return dirname(dirname(fileURLToPath(import.meta.resolve('node-llama-cpp'))))
}

/** The llama.cpp release node-llama-cpp ships (its bundle's tag), e.g. "v0.4.0". */
export function llamaCppTag(): string {
  const info = JSON.parse(readFileSync(join(llamaPackageDir(), 'llama', 'llama.cpp.info.json'), 'utf8'))
  return String(info.tag)
}

/** Builds are per machine, not per home: a throwaway SUBSTRATE_HOME reuses them. */
export function engineCacheDir(): string {
  const base =
    process.env.SUBSTRATE_ENGINE_CACHE ??
    join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'substrate')
  return join(base, `llama-server-${llamaCppTag()}-${process.arch}`)
}

/** The built binary, where a finished build leaves it (it is moved there last, atomically). */
export function builtEnginePath(): string {
  return join(engineCacheDir(), 'bin', 'llama-server')
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/** The engine a runner started now should use; `explicitPath` is runtime.llamaServer. */
export function resolveEngine(setting: EngineSetting, explicitPath?: string): Engine {
  if (setting === 'node-llama-cpp') return { kind: 'node-llama-cpp' }
  const path = explicitPath ?? builtEnginePath()
  if (executable(path)) return { kind: 'llama-server', path }
  if (setting === 'auto') return { kind: 'node-llama-cpp' }
  throw new SubstrateError('E_ENGINE_UNAVAILABLE', `llama-server is not built (looked for ${path})`, {
    hint: 'run `substrate engine build` (about 15 min on 2 cores), or set runtime.engine = auto',
  })
}

/** What a build needs that may be missing: named so the error can say what to install. */
export function missingBuildTools(): string[] {
  return ['git', 'cmake', 'c++', 'make'].filter((tool) => findTool(tool) === undefined)
}

export interface BuildProgress {
  /** configure, then compile (percent from cmake), then done */
  phase: 'source' | 'configure' | 'compile' | 'done'
  percent: number
}

export interface BuildInit {
  logger: Logger
  onProgress?: (p: BuildProgress) => void
  signal?: AbortSignal
  /** compile jobs; default: every core */
  jobs?: number
  /** run the compilers at the lowest CPU priority (background builds) */
  nice?: boolean
}

function run(cmd: string[], init: BuildInit, onLine?: (line: string) => void): Promise<void> {
  const argv = init.nice ? ['nice', '-n', '19', ...cmd] : cmd
  return new Promise((resolve, reject) => {
    // its own process group: stopping the build stops make and every compiler under it
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], detached: true })
    const stop = () => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGTERM')
      } catch {}
    }
    init.signal?.addEventListener('abort', stop, { once: true })
    child.on('exit', () => init.signal?.removeEventListener('abort', stop))
    let tail = ''
    const take = (chunk: Buffer) => {
      const text = chunk.toString('utf8')
      tail = (tail + text).slice(-3000)
      if (onLine) for (const line of text.split('\n')) if (line.trim() !== '') onLine(line)
    }
    child.stdout.on('data', take)
    child.stderr.on('data', take)
    child.on('error', (err) =>
      reject(new SubstrateError('E_ENGINE_BUILD', `cannot run ${cmd[0]}: ${err.message}`)),
    )
    child.on('exit', (code, signal) => {
      if (code === 0) resolve()
      else if (init.signal?.aborted) reject(new SubstrateError('E_CANCELLED', 'the engine build was stopped'))
      else {
        const why = signal ?? `exit code ${code}`
        reject(
          new SubstrateError(
            'E_ENGINE_BUILD',
            `${cmd.slice(0, 3).join(' ')} failed (${why}): ${tail.trim().slice(-600)}`,
          ),
        )
      }
    })
  })
}

/**
 * One build at a time per machine: an exclusive lock file holding the builder's pid. A lock
 * whose process is gone (a killed daemon) is taken over.
 */
async function takeLock(dir: string): Promise<() => void> {
  const path = join(dir, 'build.lock')
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(path, 'wx')
      await fh.writeFile(String(process.pid))
      await fh.close()
      return () => rmSync(path, { force: true })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const pid = Number(readFileSync(path, 'utf8').trim())
      let alive = false
      try {
        if (Number.isInteger(pid) && pid > 0) {
          process.kill(pid, 0)
          alive = true
        }
      } catch {}
      if (alive) {
        throw new SubstrateError('E_ENGINE_BUILD', `another build of llama-server is running (pid ${pid})`, {
          hint: 'wait for it: `substrate engine` shows when it is ready',
        })
      }
      rmSync(path, { force: true })
    }
  }
  throw new SubstrateError('E_ENGINE_BUILD', 'cannot take the engine build lock')
}

/**
 * Builds llama-server natively from node-llama-cpp's bundled llama.cpp source: offline, with
 * OpenMP and this CPU's instruction set, one static binary. Resumable: the build directory is
 * kept, so a build interrupted by a crash or a stop recompiles only what was left.
 */
export async function buildEngine(init: BuildInit): Promise<string> {
  const target = builtEnginePath()
  if (executable(target)) return target
  const missing = missingBuildTools()
  if (missing.length > 0) {
    throw new SubstrateError('E_ENGINE_BUILD', `building llama-server needs ${missing.join(', ')}`, {
      hint: 'as root: apt-get install -y git cmake g++ make',
    })
  }
  const dir = engineCacheDir()
  mkdirSync(dir, { recursive: true })
  const unlock = await takeLock(dir)
  const log = init.logger.child('engine-build')
  try {
    const src = join(dir, 'src')
    const build = join(dir, 'build')
    init.onProgress?.({ phase: 'source', percent: 0 })
    if (!existsSync(join(src, 'CMakeLists.txt'))) {
      rmSync(src, { recursive: true, force: true })
      const bundle = join(llamaPackageDir(), 'llama', 'gitRelease.bundle')
      await run(['git', 'clone', '--quiet', bundle, src], init)
    }
    init.onProgress?.({ phase: 'configure', percent: 0 })
    await run(
      [
        'cmake',
        ...['-S', src, '-B', build, '-DCMAKE_BUILD_TYPE=Release', '-DBUILD_SHARED_LIBS=OFF'],
        ...['-DGGML_NATIVE=ON', '-DLLAMA_CURL=OFF', '-DLLAMA_OPENSSL=OFF', '-DLLAMA_BUILD_TESTS=OFF'],
        ...['-DLLAMA_BUILD_EXAMPLES=OFF', '-DLLAMA_BUILD_UI=OFF', '-DLLAMA_USE_PREBUILT_UI=OFF'],
      ],
      init,
    )
    let last = -1
    const jobs = init.jobs ?? Math.max(1, availableParallelism())
    await run(['cmake', '--build', build, '-j', String(jobs), '--target', 'llama-server'], init, (line) => {
      const m = /^\[\s*(\d+)%\]/.exec(line)
      if (m === null) return
      const percent = Number(m[1])
      if (percent === last) return
      last = percent
      init.onProgress?.({ phase: 'compile', percent })
    })
    const built = join(build, 'bin', 'llama-server')
    mkdirSync(dirname(target), { recursive: true })
    copyFileSync(built, `${target}.tmp`)
    renameSync(`${target}.tmp`, target)
    log.info('llama-server built', { path: target })
    init.onProgress?.({ phase: 'done', percent: 100 })
    return target
  } finally {
    unlock()
  }
}

/**
 * `serve`'s background build: at most one per daemon, niced, logged every 10%. Failure is
 * logged once with its reason and the daemon keeps serving on node-llama-cpp.
 */
export function startBackgroundEngineBuild(logger: Logger): {
  stop(): void
  done: Promise<string | undefined>
} {
  const log = logger.child('engine-build')
  const abort = new AbortController()
  let reported = -10
  log.info(
    "building llama.cpp's server for this CPU in the background (node-llama-cpp serves until it is ready)",
    {
      dir: engineCacheDir(),
    },
  )
  const done = buildEngine({
    logger,
    signal: abort.signal,
    nice: true,
    onProgress: (p) => {
      if (p.phase === 'compile' && p.percent >= reported + 10) {
        reported = p.percent - (p.percent % 10)
        log.info('engine build progress', { percent: p.percent })
      }
    },
  }).then(
    (path) => {
      log.info('llama-server is ready: models loaded from now on use it', { path })
      return path
    },
    (err: unknown) => {
      if (!abort.signal.aborted) {
        log.warn('the llama-server build failed; node-llama-cpp keeps serving', {
          error: err instanceof Error ? err.message : String(err),
        })
      }
      return undefined
    },
  )
  return { stop: () => abort.abort(), done }
}
