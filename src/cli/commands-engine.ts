// `substrate engine`: which inference engine new runners use, and `substrate engine build`,
// which builds llama.cpp's own server for this CPU (src/runtime/engine.ts). Local: it needs no
// daemon, and a running daemon picks the build up for the next model it loads.

import { loadConfig } from '../config/load.ts'
import { silentLogger } from '../logger.ts'
import {
  buildEngine,
  builtEnginePath,
  engineCacheDir,
  llamaCppTag,
  missingBuildTools,
  resolveEngine,
} from '../runtime/engine.ts'
import { type Command, writeJson } from './render.ts'

function status(home: string | undefined) {
  const config = loadConfig({ home })
  const setting = config.runtime.engine
  const built = builtEnginePath()
  let active: string
  let problem: string | undefined
  try {
    active = resolveEngine(setting, config.runtime.llamaServer).kind
  } catch (err) {
    active = 'none'
    problem = err instanceof Error ? err.message : String(err)
  }
  const missing = missingBuildTools()
  return {
    setting,
    active,
    llamaCpp: llamaCppTag(),
    built: resolveEngine('auto').kind === 'llama-server' ? built : null,
    cache: engineCacheDir(),
    buildTools: missing.length === 0 ? 'present' : `missing: ${missing.join(', ')}`,
    ...(problem !== undefined && { problem }),
  }
}

const engine: Command = {
  usage: 'substrate engine [build]',
  description:
    'Shows which engine runs models. Two engines sit behind the same runner protocol and sandbox:\n' +
    "node-llama-cpp (always there; its prebuilt CPU binary is slow on small models) and llama.cpp's\n" +
    'own llama-server, built natively for this CPU from the exact llama.cpp source node-llama-cpp\n' +
    'ships (offline, with OpenMP). runtime.engine = auto (the default) uses llama-server once it is\n' +
    'built; a daemon builds it in the background at start (runtime.engineBuild), or run\n' +
    '`substrate engine build` to build it now, with progress. It needs git, cmake and a C++\n' +
    'compiler, takes ~15 minutes on 2 cores, and is cached per machine; an interrupted build resumes.',
  examples: ['substrate engine', 'substrate engine build', 'SUBSTRATE_ENGINE=node-llama-cpp substrate serve'],
  env: [
    'SUBSTRATE_ENGINE, SUBSTRATE_ENGINE_BUILD, SUBSTRATE_LLAMA_SERVER, SUBSTRATE_ENGINE_CACHE (build cache)',
  ],
  flags: {},
  args: { min: 0, max: 1 },
  async run(ctx, { positionals }) {
    const action = positionals[0]
    if (action !== undefined && action !== 'build') {
      throw new Error(`unknown action ${JSON.stringify(action)}: expected nothing or "build"`)
    }
    if (action === 'build') {
      const started = performance.now()
      let last = ''
      // a terminal gets one line redrawn; a log (CI, a pipe) a line per step and per 10%
      const tty = (ctx.io.stderr as { isTTY?: boolean }).isTTY === true
      const path = await buildEngine({
        logger: silentLogger,
        onProgress: (p) => {
          const step = p.phase === 'compile' ? (tty ? p.percent : p.percent - (p.percent % 10)) : -1
          const line = p.phase === 'compile' ? `compiling ${step}%` : p.phase
          if (line === last || ctx.json) return
          last = line
          ctx.io.stderr.write(
            tty ? `\rbuilding llama-server: ${line.padEnd(16)}` : `building llama-server: ${line}\n`,
          )
        },
      })
      if (!ctx.json && tty) ctx.io.stderr.write('\n')
      const seconds = Math.round((performance.now() - started) / 1000)
      if (ctx.json) return writeJson(ctx.io.stdout, { built: path, seconds })
      ctx.io.stdout.write(`llama-server ready: ${path} (${seconds} s)\n`)
      ctx.io.stdout.write('models loaded from now on use it (runtime.engine = auto)\n')
      return
    }
    const s = status(ctx.connection.home)
    if (ctx.json) return writeJson(ctx.io.stdout, s)
    ctx.io.stdout.write(`engine setting:  ${s.setting}\n`)
    ctx.io.stdout.write(`new runners use: ${s.active}${s.problem ? ` (${s.problem})` : ''}\n`)
    ctx.io.stdout.write(`llama.cpp:       ${s.llamaCpp} (the source node-llama-cpp ships)\n`)
    ctx.io.stdout.write(`llama-server:    ${s.built ?? 'not built — `substrate engine build`'}\n`)
    ctx.io.stdout.write(`build cache:     ${s.cache}\n`)
    ctx.io.stdout.write(`build tools:     ${s.buildTools}\n`)
  },
}

export const commands: Record<string, Command> = { engine }
