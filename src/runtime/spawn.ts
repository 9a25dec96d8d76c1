// The one place a runner process is started. The sandbox wraps this function: everything
// that runs a model goes through `spawnRunner`, so isolating it here isolates them all.

import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process'
import { extname } from 'node:path'
import { fileURLToPath } from 'node:url'

export interface RunnerSpawnSpec {
  /** the model file the runner will load: the only model a sandbox needs to expose */
  modelPath: string
  /** 0 = the runner chooses by measurement */
  threads: number
  /** per-sequence context and sequences: what a sandbox sizes the runner's memory ceiling from */
  contextSize?: number
  parallel?: number
  /** llama-server (engine.ts) on the host, when the runner will start it: a sandbox exposes it */
  enginePath?: string
}

export type SpawnRunner = (spec: RunnerSpawnSpec) => ChildProcessWithoutNullStreams

/**
 * How runners are started and what they see. The sandbox backends (src/sandbox/select.ts)
 * implement it; the runtime only ever talks to this.
 */
export interface RunnerLauncher {
  spawn: SpawnRunner
  /** the path the runner must `load` for the model file at `hostPath` (a sandbox remaps it) */
  modelPathInside(hostPath: string): string
  /**
   * The path a runner must run the llama-server binary at `hostPath` by (a sandbox binds it
   * elsewhere); undefined where runners cannot reach one (they use node-llama-cpp). Absent: as is.
   */
  enginePathInside?(hostPath: string): string | undefined
  /** after the child exits: what ended it, where the launcher knows more than the exit status (OOM) */
  exitReason(child: ChildProcessWithoutNullStreams): Promise<string | undefined>
}

/** Runs from sources (.ts, type-stripped) or from dist (.js), whichever this file is. */
export const runnerEntry = fileURLToPath(
  new URL(`./runner-main${extname(fileURLToPath(import.meta.url))}`, import.meta.url),
)

/** The environment a runner gets: nothing of the daemon's secrets, only what it needs to run. */
export function runnerEnvironment(): NodeJS.ProcessEnv {
  const keep = ['PATH', 'HOME', 'TMPDIR', 'LANG', 'NODE_LLAMA_CPP_SKIP_DOWNLOAD']
  const env: NodeJS.ProcessEnv = {}
  for (const k of keep) if (process.env[k] !== undefined) env[k] = process.env[k]
  return env
}

export const spawnUnsandboxedRunner: SpawnRunner = () =>
  spawn(process.execPath, [runnerEntry], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: runnerEnvironment(),
  })

export const unsandboxedLauncher: RunnerLauncher = {
  spawn: spawnUnsandboxedRunner,
  modelPathInside: (hostPath) => hostPath,
  enginePathInside: (hostPath) => hostPath,
  exitReason: async () => undefined,
}
