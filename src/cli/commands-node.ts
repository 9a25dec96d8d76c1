// Commands about the node itself: serve (the daemon, in the foreground), and the read-only
// views of it that come back over the API: info, id, config, version.

import { toSubstrateError } from '../errors.ts'
import type { HardwareInfo } from '../hardware/detect.ts'
import { VERSION } from '../version.ts'
import { reachabilityLines } from './commands-peers.ts'
import { leanStartup } from './lean-heap.ts'
import { type Command, type FlagSpec, formatBytes, table, writeJson } from './render.ts'

// Daemon settings serve accepts as flags; names match loadConfig's short names.
const serveFlags: Record<string, FlagSpec> = {
  threads: { type: 'string', value: 'N', help: 'CPU threads per runner (SUBSTRATE_THREADS)' },
  'keep-alive': {
    type: 'string',
    value: 'D',
    help: 'how long an idle model stays loaded: 5m, 1h, 0, -1 = forever (SUBSTRATE_KEEP_ALIVE)',
  },
  parallel: { type: 'string', value: 'N', help: 'concurrent requests per model (SUBSTRATE_PARALLEL)' },
  'context-size': { type: 'string', value: 'N', help: 'context tokens per request (SUBSTRATE_CONTEXT_SIZE)' },
  'max-loaded-models': {
    type: 'string',
    value: 'N',
    help: 'models kept loaded at once (SUBSTRATE_MAX_LOADED_MODELS)',
  },
  engine: {
    type: 'string',
    value: 'E',
    help: 'auto (llama-server once built), llama-server or node-llama-cpp (SUBSTRATE_ENGINE)',
  },
  'engine-build': {
    type: 'string',
    value: 'BOOL',
    help: 'build llama-server in the background when none is built (default true; SUBSTRATE_ENGINE_BUILD)',
  },
  'log-level': { type: 'string', value: 'L', help: 'debug, info, warn or error (SUBSTRATE_LOG_LEVEL)' },
  sandbox: { type: 'string', value: 'B', help: 'runner sandbox: bwrap, gvisor or none (SUBSTRATE_SANDBOX)' },
  mesh: {
    type: 'string',
    value: 'BOOL',
    help: 'join the mesh: true or false (default true; SUBSTRATE_MESH)',
  },
  'mesh-listen': {
    type: 'string',
    value: 'ADDRS',
    help: 'mesh multiaddrs to listen on, comma-separated (default /ip4/127.0.0.1/tcp/0; SUBSTRATE_MESH_LISTEN)',
  },
  bootstrap: {
    type: 'string',
    value: 'ADDRS',
    help: 'peers to join, comma-separated multiaddrs ending in /p2p/<id> (SUBSTRATE_BOOTSTRAP)',
  },
  mdns: {
    type: 'string',
    value: 'BOOL',
    help: 'find peers on the LAN by mDNS (default false; SUBSTRATE_MDNS)',
  },
  'job-slots': {
    type: 'string',
    value: 'N',
    help: 'mesh jobs served at once (default 2; SUBSTRATE_JOB_SLOTS)',
  },
  'mesh-stall-timeout': {
    type: 'string',
    value: 'D',
    help: 'silence from a mesh worker before its job moves to another peer (default 30s; SUBSTRATE_MESH_STALL_TIMEOUT)',
  },
  'spot-check-rate': {
    type: 'string',
    value: 'SHARE',
    help: 'share of our receipts a third node re-checks, 0 to 1 (default 0.05; SUBSTRATE_SPOT_CHECK_RATE)',
  },
  relay: {
    type: 'string',
    value: 'BOOL',
    help: 'serve as a circuit relay for nodes behind NATs (default false; SUBSTRATE_RELAY)',
  },
  'relay-max-reservations': {
    type: 'string',
    value: 'N',
    help: 'relay slots held for others at once (default 32; SUBSTRATE_RELAY_MAX_RESERVATIONS)',
  },
  'relay-client': {
    type: 'string',
    value: 'BOOL',
    help: 'reserve a slot on a relay so peers behind NATs can dial us (default true; SUBSTRATE_RELAY_CLIENT)',
  },
  'random-walk': {
    type: 'string',
    value: 'N',
    help: 'walk the DHT while fewer than N peers are connected; 0 is off (default 8; SUBSTRATE_RANDOM_WALK)',
  },
  'ledger-keep-alive': {
    type: 'string',
    value: 'D',
    help: 'unchanged ledger heads are re-announced this long after the last announcement (default 40s; SUBSTRATE_LEDGER_KEEP_ALIVE)',
  },
}

const serve: Command = {
  usage: 'substrate serve [--host H[:P]] [--port P] [--home DIR] [--threads N] [--keep-alive D] ...',
  description:
    'Starts the daemon in the foreground and serves the Ollama-compatible (/api), OpenAI-compatible\n' +
    '(/v1) and native (/substrate/v1) APIs until Ctrl+C or SIGTERM. Settings come from flags, then\n' +
    'SUBSTRATE_* variables, then $SUBSTRATE_HOME/config.toml, then defaults. Only one daemon may use\n' +
    'a home at a time. Other commands start a daemon in the background themselves when none runs.',
  examples: [
    'substrate serve',
    'substrate serve --port 11500 --keep-alive 30m',
    'SUBSTRATE_HOME=/tmp/node2 substrate serve --port 0',
    'substrate serve --home /tmp/n2 --port 0 --bootstrap /ip4/127.0.0.1/tcp/4435/p2p/12D3KooW...',
  ],
  env: [
    'SUBSTRATE_LOG_LEVEL  debug, info, warn or error',
    'SUBSTRATE_LOG_FORMAT json for one JSON object per log line',
    'SUBSTRATE_KEEP_ALIVE, SUBSTRATE_THREADS, SUBSTRATE_PARALLEL, SUBSTRATE_CONTEXT_SIZE',
    'SUBSTRATE_ENGINE, SUBSTRATE_ENGINE_BUILD, SUBSTRATE_LLAMA_SERVER (a llama-server binary of your own)',
    'SUBSTRATE_MESH, SUBSTRATE_MESH_LISTEN, SUBSTRATE_BOOTSTRAP, SUBSTRATE_MDNS, SUBSTRATE_JOB_SLOTS',
    'SUBSTRATE_MESH_STALL_TIMEOUT',
    'SUBSTRATE_RELAY, SUBSTRATE_RELAY_MAX_RESERVATIONS, SUBSTRATE_RELAY_CLIENT, SUBSTRATE_RANDOM_WALK',
    'SUBSTRATE_LEDGER_KEEP_ALIVE',
  ],
  flags: serveFlags,
  args: { min: 0, max: 0 },
  async run(ctx, { values }) {
    const lean = leanStartup()
    // Loaded here, not at the top: only serve needs the daemon's code.
    const [{ loadConfig, describeConfig }, { createNode }, { createLogger }] = await Promise.all([
      import('../config/load.ts'),
      import('../node.ts'),
      import('../logger.ts'),
    ])
    const flags: Record<string, string | undefined> = {
      host: ctx.connection.host,
      port: ctx.connection.port,
      token: ctx.connection.token,
    }
    for (const name of Object.keys(serveFlags)) {
      const value = values[name]
      if (typeof value === 'string') flags[name] = value
    }
    const config = loadConfig({ flags, home: ctx.connection.home })
    const logger = createLogger({ level: config.log.level })
    const node = await createNode(config, {
      logger,
      describeConfig: () => describeConfig(config),
      fullSpeed: lean.fullSpeed,
    })
    lean.ready()
    logger.info(`substrate ${VERSION} ready`, { url: node.api.url, home: config.home, pid: process.pid })

    let signals = 0
    const onSignal = (signal: NodeJS.Signals) => {
      // A second Ctrl+C means "now": skip waiting for runners to wind down.
      if (++signals > 1) process.exit(130)
      logger.info('stopping', { signal })
      void node.stop()
    }
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    try {
      await node.stopped
    } finally {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    }
    logger.info('stopped')
    // Everything is closed; if a stray handle still holds the loop, do not hang the shell.
    setTimeout(() => process.exit(process.exitCode ?? 0), 2000).unref()
  },
}

function hardwareLines(hw: HardwareInfo): string[][] {
  const cpu = `${hw.cpu.model} (${hw.cpu.cores} cores, ${hw.cpu.physicalCores} physical${
    hw.cpu.features.length ? `; ${hw.cpu.features.join(' ')}` : ''
  })`
  const gpu =
    hw.gpu.kind === 'none'
      ? 'none found'
      : `${hw.gpu.kind}${hw.gpu.name ? ` ${hw.gpu.name}` : ''}: ${formatBytes(hw.gpu.vramFreeBytes)} free of ${formatBytes(hw.gpu.vramBytes)}`
  return [
    ['CPU', cpu],
    ['Memory', `${formatBytes(hw.memory.freeBytes)} free of ${formatBytes(hw.memory.totalBytes)}`],
    ['GPU', gpu],
    [
      'Disk',
      `${formatBytes(hw.disk.freeBytes)} free of ${formatBytes(hw.disk.totalBytes)} at ${hw.disk.path}`,
    ],
    ['OS', `${hw.os.platform} ${hw.os.release} ${hw.os.arch}`],
  ]
}

const info: Command = {
  usage: 'substrate info',
  description:
    'Shows the hardware the daemon sees (CPU and its SIMD features, memory, GPU, free disk in its\nhome): what decides which models this node can load and what it can offer the mesh; and how\nother nodes reach it (AutoNAT, relay reservations), as `substrate peers` also shows.',
  examples: ['substrate info', 'substrate info --json | jq .memory'],
  flags: {},
  args: { min: 0, max: 0 },
  async run(ctx) {
    const daemon = await ctx.daemon()
    const hw = await daemon.info()
    if (ctx.json) return writeJson(ctx.io.stdout, hw)
    for (const [label, text] of hardwareLines(hw)) ctx.io.stdout.write(`${label!.padEnd(8)}${text}\n`)
    // What the mesh needs to know about this machine's network: can others reach it, and how.
    const { reachability } = await daemon.peers()
    if (reachability !== null)
      for (const [label, text] of reachabilityLines(reachability))
        ctx.io.stdout.write(
          `${(label === 'reachable' ? 'Network' : '').padEnd(8)}${label === 'reachable' ? text : `${label}: ${text}`}\n`,
        )
  },
}

const id: Command = {
  usage: 'substrate id',
  description:
    "Shows this node's identity: the id derived from its Ed25519 key (kept in\n$SUBSTRATE_HOME/identity.key) and the public key, base64. Peers know the node by this id.",
  examples: ['substrate id', 'substrate id --json'],
  flags: {},
  args: { min: 0, max: 0 },
  async run(ctx) {
    const identity = await (await ctx.daemon()).id()
    if (ctx.json) return writeJson(ctx.io.stdout, identity)
    ctx.io.stdout.write(`id          ${identity.id}\npublic key  ${identity.publicKey}\n`)
  },
}

const config: Command = {
  usage: 'substrate config',
  description:
    "Shows the running daemon's configuration: every key, its value (the token redacted) and where\nit came from: a flag, a SUBSTRATE_* variable, $SUBSTRATE_HOME/config.toml, or the default.",
  examples: ['substrate config', 'substrate config --json'],
  flags: {},
  args: { min: 0, max: 0 },
  async run(ctx) {
    const { entries } = await (await ctx.daemon()).config()
    if (ctx.json) return writeJson(ctx.io.stdout, entries)
    const show = (v: unknown) => (typeof v === 'string' ? v : JSON.stringify(v))
    ctx.io.stdout.write(
      table(
        ['KEY', 'VALUE', 'SOURCE'],
        entries.map((e) => [e.key, show(e.value), e.source]),
      ),
    )
  },
}

const version: Command = {
  usage: 'substrate version',
  description:
    "Shows the CLI's version and, if a daemon answers, the daemon's; they should match. Never starts\na daemon. `substrate --version` prints only the CLI's version and is instant.",
  examples: ['substrate version', 'substrate version --json'],
  flags: {},
  args: { min: 0, max: 0 },
  async run(ctx) {
    let daemon: string | null = null
    let why = ''
    try {
      const client = await ctx.client()
      daemon = (await client.version({ signal: AbortSignal.timeout(2000) })).version
    } catch (err) {
      why = toSubstrateError(err).message
    }
    if (ctx.json) return writeJson(ctx.io.stdout, { client: VERSION, daemon })
    ctx.io.stdout.write(`client version ${VERSION}\n`)
    ctx.io.stdout.write(daemon === null ? `daemon: not reachable (${why})\n` : `daemon version ${daemon}\n`)
    if (daemon !== null && daemon !== VERSION)
      ctx.io.stderr.write('warning: the client and daemon versions differ\n')
  },
}

export const commands: Record<string, Command> = { serve, info, id, config, version }
