#!/usr/bin/env node
// The `substrate` command: finds the subcommand, parses its flags, runs it, and turns any
// error into one line and an exit code from errorTable. Command modules are imported only
// once a command is chosen, so `substrate --version` loads this file, errors.ts and
// version.ts and nothing else (no zod, no node-llama-cpp): it has to answer in well under
// 300 ms.

import { type ParseArgsOptionsConfig, parseArgs } from 'node:util'
import { SubstrateError, toSubstrateError } from '../errors.ts'
import { VERSION } from '../version.ts'
import type { Command, CommandContext, FlagSpec, Io } from './render.ts'

type Loader = () => Promise<Record<string, Command>>
const models: Loader = async () => (await import('./commands-models.ts')).commands
const runner: Loader = async () => (await import('./commands-run.ts')).commands
const node: Loader = async () => (await import('./commands-node.ts')).commands
const peers: Loader = async () => (await import('./commands-peers.ts')).commands
const credits: Loader = async () => (await import('./commands-credits.ts')).commands
const doctor: Loader = async () => (await import('./commands-doctor.ts')).commands
const engine: Loader = async () => (await import('./commands-engine.ts')).commands

/** Every command, its one-line summary and where it lives; the order is the help's. */
export const commandIndex: Record<string, { summary: string; load: Loader }> = {
  serve: { summary: 'Start the daemon in the foreground', load: node },
  run: { summary: 'Run a model: answer one prompt, or chat when none is given', load: runner },
  pull: { summary: 'Download a model from a URL, or fetch a built-in one', load: models },
  import: { summary: 'Add a local GGUF file as a model', load: models },
  list: { summary: 'List the models on this node (alias: ls)', load: models },
  show: { summary: "Show a model's details", load: models },
  ps: { summary: 'List the models loaded in memory', load: models },
  peers: { summary: "Show the mesh's peers: their models, free slots, speed, latency", load: peers },
  credits: {
    summary: "Show a member's credits: balance, today's floor, earned, spent, and why",
    load: credits,
  },
  ledger: {
    summary: 'Look at the credits ledger (log, verify, stats), or vouch for a member',
    load: credits,
  },
  stop: { summary: 'Unload a model from memory', load: models },
  rm: { summary: 'Remove a model', load: models },
  info: { summary: "Show this machine's hardware as the daemon sees it", load: node },
  id: { summary: "Show this node's identity", load: node },
  config: { summary: "Show the daemon's configuration and where each value came from", load: node },
  version: { summary: "Show the CLI's and the daemon's version", load: node },
  doctor: { summary: 'Show which sandbox layers this host really enforces for runners', load: doctor },
  engine: { summary: "Show the inference engine, or build llama.cpp's server for this CPU", load: engine },
}
const aliases: Record<string, string> = { ls: 'list' }

export const globalFlags: Record<string, FlagSpec> = {
  host: { type: 'string', value: 'H[:P]', help: "the daemon's address (default 127.0.0.1; SUBSTRATE_HOST)" },
  port: { type: 'string', value: 'P', help: "the daemon's port (default 11435; SUBSTRATE_PORT)" },
  home: {
    type: 'string',
    value: 'DIR',
    help: "the node's data directory (default ~/.substrate; SUBSTRATE_HOME)",
  },
  token: { type: 'string', value: 'T', help: 'bearer token for the API (SUBSTRATE_TOKEN)' },
  json: { type: 'boolean', help: 'print machine-readable JSON on stdout' },
  debug: { type: 'boolean', help: 'print stack traces with errors' },
  help: { type: 'boolean', short: 'h', help: 'show help' },
}
const versionFlag: Record<string, FlagSpec> = {
  version: { type: 'boolean', short: 'v', help: "print the CLI's version" },
}
const globalEnv = [
  'SUBSTRATE_HOME   where the node keeps its data (default ~/.substrate)',
  "SUBSTRATE_HOST   the daemon's address, e.g. 127.0.0.1:11435",
  "SUBSTRATE_PORT   the daemon's port",
  'SUBSTRATE_TOKEN  bearer token, required when the daemon listens beyond loopback',
]

function usageError(message: string, help = 'substrate help'): SubstrateError {
  return new SubstrateError('E_INVALID_ARGUMENT', message, { hint: `see '${help}'` })
}

function flagLines(flags: Record<string, FlagSpec>): string[] {
  const left = Object.entries(flags).map(([name, f]) => {
    const short = f.short ? `-${f.short}, ` : ''
    return `${short}--${name}${f.value ? ` ${f.value}` : ''}`
  })
  const width = Math.max(...left.map((l) => l.length)) + 3
  return Object.values(flags).map((f, i) => `  ${left[i]!.padEnd(width)}${f.help}`)
}

export function generalHelp(): string {
  const names = Object.keys(commandIndex)
  const width = Math.max(...names.map((n) => n.length)) + 3
  return [
    `Substrate ${VERSION}: a peer-to-peer compute commons for open AI models.`,
    '',
    'Usage: substrate COMMAND [ARGS] [FLAGS]',
    '',
    'Commands:',
    ...names.map((n) => `  ${n.padEnd(width)}${commandIndex[n]!.summary}`),
    `  ${'help'.padEnd(width)}Show help for a command`,
    '',
    'Global flags:',
    ...flagLines({ ...globalFlags, ...versionFlag }),
    '',
    'Environment:',
    ...globalEnv.map((line) => `  ${line}`),
    '',
    'Example:',
    '  substrate run substrate-tiny "Write a haiku about rivers"',
    '',
    "Run 'substrate help COMMAND' for more about a command.",
    '',
  ].join('\n')
}

export function commandHelp(cmd: Command): string {
  const lines = [`Usage: ${cmd.usage}`, '', cmd.description, '']
  if (Object.keys(cmd.flags).length > 0) lines.push('Flags:', ...flagLines(cmd.flags), '')
  lines.push('Global flags:', ...flagLines(globalFlags), '')
  lines.push(cmd.examples.length > 1 ? 'Examples:' : 'Example:', ...cmd.examples.map((e) => `  ${e}`), '')
  lines.push('Environment:', ...[...(cmd.env ?? []), ...globalEnv].map((e) => `  ${e}`), '')
  return lines.join('\n')
}

function toParseArgs(flags: Record<string, FlagSpec>): ParseArgsOptionsConfig {
  const out: ParseArgsOptionsConfig = {}
  for (const [name, f] of Object.entries(flags))
    out[name] = f.short ? { type: f.type, short: f.short } : { type: f.type }
  return out
}

/** parseArgs, with its errors turned into short usage errors. */
function parseStrict(args: string[], flags: Record<string, FlagSpec>, help: string) {
  try {
    return parseArgs({ args, options: toParseArgs(flags), strict: true, allowPositionals: true })
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err)
    const unknown = /Unknown option '([^']+)'/.exec(message)?.[1]
    throw usageError(unknown ? `unknown flag ${unknown}` : message.split('. ')[0]!, help)
  }
}

/**
 * Splits argv into the command and everything else. Global flags may come before the
 * command (`substrate --port 1234 list`), so a flag that takes a value skips its value.
 */
export function splitCommand(argv: string[]): { command: string | undefined; rest: string[] } {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '--') break
    if (arg.startsWith('-')) {
      const name = arg.replace(/^-+/, '')
      if (globalFlags[name]?.type === 'string') i++
      continue
    }
    return { command: arg, rest: [...argv.slice(0, i), ...argv.slice(i + 1)] }
  }
  return { command: undefined, rest: argv }
}

export interface Resolved {
  name: string
  command: Command
  values: Record<string, string | boolean | undefined>
  positionals: string[]
}

/** Finds and loads the command, parses its flags and checks its arguments; no daemon needed. */
export async function resolveCommand(name: string, rest: string[]): Promise<Resolved> {
  const canonical = aliases[name] ?? name
  const entry = commandIndex[canonical]
  if (!entry) throw usageError(`unknown command '${name}'`)
  const command = (await entry.load())[canonical]
  if (!command) throw new SubstrateError('E_INTERNAL', `command '${canonical}' is missing from its module`)
  const help = `substrate help ${canonical}`
  const { values, positionals } = parseStrict(rest, { ...globalFlags, ...command.flags }, help)
  if (values.help !== true) {
    const { min, max } = command.args
    if (positionals.length < min) throw usageError(`missing arguments; usage: ${command.usage}`, help)
    if (max !== undefined && positionals.length > max) {
      throw usageError(`unexpected argument '${positionals[max]}'; usage: ${command.usage}`, help)
    }
  }
  // No flag is declared `multiple`, so no value is an array.
  return { name: canonical, command, values: values as Resolved['values'], positionals }
}

function createContext(io: Io, values: Resolved['values']): CommandContext {
  const str = (key: string) => (typeof values[key] === 'string' ? (values[key] as string) : undefined)
  const connection = { host: str('host'), port: str('port'), home: str('home'), token: str('token') }
  // Flags > env > config.toml > defaults, the same layering the daemon uses.
  const load = async () => {
    const [{ loadConfig }, daemon] = await Promise.all([import('../config/load.ts'), import('./daemon.ts')])
    const config = loadConfig({
      flags: { host: connection.host, port: connection.port, token: connection.token },
      home: connection.home,
    })
    return { config, daemon }
  }
  let located: ReturnType<typeof load> | undefined
  const locate = () => {
    located ??= load()
    return located
  }
  const ctx: CommandContext = {
    io,
    json: values.json === true,
    debug: values.debug === true,
    connection: Object.fromEntries(Object.entries(connection).filter(([, v]) => v !== undefined)),
    async client() {
      const { config, daemon } = await locate()
      return daemon.clientFor(config)
    },
    async daemon() {
      const { config, daemon } = await locate()
      return daemon.ensureDaemon(config, ctx)
    },
  }
  return ctx
}

function renderError(io: Io, err: unknown, debug: boolean): number {
  const e = toSubstrateError(err)
  io.stderr.write(`Error: ${e.message}\n`)
  if (e.hint) io.stderr.write(`hint: ${e.hint}\n`)
  if (debug) {
    io.stderr.write(`${e.code}\n${e.stack ?? ''}\n`)
    if (e.cause instanceof Error) io.stderr.write(`caused by: ${e.cause.stack ?? e.cause.message}\n`)
  }
  return e.exitCode
}

/** Runs one command line and returns the exit code; never throws. */
export async function main(argv: string[], io: Io): Promise<number> {
  const debug = argv.includes('--debug')
  try {
    const { command, rest } = splitCommand(argv)
    if (command === undefined || command === 'help') {
      const topic = command === 'help' ? rest.find((a) => !a.startsWith('-')) : undefined
      if (topic !== undefined) {
        const { command: cmd } = await resolveCommand(topic, ['--help'])
        io.stdout.write(commandHelp(cmd))
        return 0
      }
      const { values } = parseStrict(rest, { ...globalFlags, ...versionFlag }, 'substrate help')
      io.stdout.write(values.version === true ? `substrate version ${VERSION}\n` : generalHelp())
      return 0
    }
    const resolved = await resolveCommand(command, rest)
    if (resolved.values.help === true) {
      io.stdout.write(commandHelp(resolved.command))
      return 0
    }
    const ctx = createContext(io, resolved.values)
    await resolved.command.run(ctx, { values: resolved.values, positionals: resolved.positionals })
    return 0
  } catch (err) {
    return renderError(io, err, debug)
  }
}

if (import.meta.main) {
  // `substrate list | head -1` closes the pipe early; that is not an error worth a trace.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0)
    throw err
  })
  const io: Io = {
    stdout: process.stdout,
    stderr: process.stderr,
    // A getter: touching process.stdin creates a stream, which only `run` may need.
    get stdin() {
      return process.stdin
    },
  }
  process.exitCode = await main(process.argv.slice(2), io)
}
