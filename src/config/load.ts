// Assembles a Config from four layers, each overriding the one before:
//   defaults < $home/config.toml < SUBSTRATE_* environment < flags.
// Each layer is validated on its own so that an error names where the bad value came from
// ("config.toml: api.port must be …", "SUBSTRATE_PORT: …", "--port: …"), and the source of
// every key is remembered so `substrate config` can show it.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parse as parseToml, TomlError } from 'smol-toml'
import { type ErrorCode, SubstrateError } from '../errors.ts'
import {
  type Config,
  type ConfigKey,
  configKeys,
  configSchema,
  defaultHome,
  formatDuration,
  isLoopbackHost,
  leafSchemas,
  nonLoopbackHint,
} from './schema.ts'

export type ConfigSource = 'default' | 'file' | 'env' | 'flag'

export interface LoadConfigOptions {
  /** Config flags: dotted keys (`api.port`) or short names (`port`, `keep-alive`). */
  flags?: Record<string, string | undefined>
  env?: NodeJS.ProcessEnv
  /** An explicit home directory; it wins over SUBSTRATE_HOME and counts as a flag. */
  home?: string
}

interface Setting {
  raw: unknown
  /** Where the value was written, as a user would recognise it: a path, a variable, a flag. */
  origin: string
}

interface Layer {
  source: ConfigSource
  code: ErrorCode
  settings: Map<ConfigKey, Setting>
}

const sourcesByConfig = new WeakMap<Config, Map<ConfigKey, ConfigSource>>()

// Names are compared lower-cased with "-" and "_" removed, so --keep-alive, keepAlive,
// keep_alive and SUBSTRATE_KEEP_ALIVE all mean the same key.
const normalise = (name: string) =>
  name
    .replace(/^-+/, '')
    .toLowerCase()
    .replace(/^substrate_/, '')
    .replace(/[-_]/g, '')

const shortNames: Record<string, ConfigKey> = {
  home: 'home',
  host: 'api.host',
  port: 'api.port',
  token: 'api.token',
  threads: 'runtime.threads',
  keepalive: 'runtime.keepAlive',
  parallel: 'runtime.parallel',
  contextsize: 'runtime.contextSize',
  maxloadedmodels: 'runtime.maxLoadedModels',
  engine: 'runtime.engine',
  llamaserver: 'runtime.llamaServer',
  enginebuild: 'runtime.engineBuild',
  streamwindow: 'runtime.streamWindow',
  loglevel: 'log.level',
  sandbox: 'sandbox.backend',
  mesh: 'mesh.enabled',
  meshlisten: 'mesh.listen',
  bootstrap: 'mesh.bootstrap',
  mdns: 'mesh.mdns',
  jobslots: 'mesh.jobSlots',
  meshstalltimeout: 'mesh.stallTimeout',
  spotcheckrate: 'mesh.spotCheckRate',
  relay: 'mesh.relayServe',
  relayserve: 'mesh.relayServe',
  relaymaxreservations: 'mesh.relayMaxReservations',
  relayclient: 'mesh.relayClient',
  randomwalk: 'mesh.randomWalk',
  ledgerkeepalive: 'mesh.ledgerKeepAlive',
}
const dottedNames = new Map<string, ConfigKey>(configKeys.map((key) => [normalise(key), key]))

/** True when a CLI flag name is one loadConfig understands (so the CLI can pass only those). */
export function isConfigFlag(name: string): boolean {
  const n = normalise(name)
  return n in shortNames || dottedNames.has(n)
}

/** Splits an OLLAMA_HOST-style value: "0.0.0.0", "0.0.0.0:8080", "[::1]:8080", "http://h:1/". */
export function parseHostPort(value: string): { host?: string; port?: string } {
  const text = value
    .trim()
    .replace(/^[a-z][a-z0-9+.-]*:\/\//i, '')
    .replace(/\/.*$/, '')
  const bracketed = /^\[([^\]]*)\](?::(.*))?$/.exec(text)
  if (bracketed) return withoutEmpty(bracketed[1], bracketed[2])
  // More than one colon and no brackets: a bare IPv6 address, which cannot carry a port.
  if (text.indexOf(':') !== text.lastIndexOf(':')) return { host: text }
  const [host, port] = text.split(':')
  return withoutEmpty(host, port)
}

function withoutEmpty(host: string | undefined, port: string | undefined): { host?: string; port?: string } {
  const out: { host?: string; port?: string } = {}
  if (host) out.host = host
  if (port !== undefined) out.port = port
  return out
}

function set(layer: Layer, key: ConfigKey, raw: unknown, origin: string): void {
  const earlier = layer.settings.get(key)
  if (earlier !== undefined && String(earlier.raw) !== String(raw)) {
    throw new SubstrateError(layer.code, `${earlier.origin} and ${origin} disagree about ${key}`, {
      hint: 'give the value once',
    })
  }
  layer.settings.set(key, { raw, origin })
}

/** Env and flags are strings; integer keys accept a string of digits. */
function fromNamed(layer: Layer, name: string, value: string, origin: string): void {
  const n = normalise(name)
  if (n === 'host') {
    const { host, port } = parseHostPort(value)
    if (host !== undefined) set(layer, 'api.host', host, origin)
    if (port !== undefined) set(layer, 'api.port', port, origin)
    if (host === undefined && port === undefined) set(layer, 'api.host', value, origin)
    return
  }
  const key = shortNames[n] ?? dottedNames.get(n)
  if (key === undefined) {
    throw new SubstrateError('E_INVALID_ARGUMENT', `unknown config flag ${origin}`, {
      hint: `config keys are: ${configKeys.join(', ')}`,
    })
  }
  set(layer, key, value, origin)
}

const envVars = [
  'SUBSTRATE_HOME',
  'SUBSTRATE_HOST',
  'SUBSTRATE_PORT',
  'SUBSTRATE_TOKEN',
  'SUBSTRATE_THREADS',
  'SUBSTRATE_KEEP_ALIVE',
  'SUBSTRATE_PARALLEL',
  'SUBSTRATE_CONTEXT_SIZE',
  'SUBSTRATE_MAX_LOADED_MODELS',
  'SUBSTRATE_LOG_LEVEL',
  'SUBSTRATE_SANDBOX',
  'SUBSTRATE_MESH',
  'SUBSTRATE_MESH_LISTEN',
  'SUBSTRATE_BOOTSTRAP',
  'SUBSTRATE_MDNS',
  'SUBSTRATE_JOB_SLOTS',
  'SUBSTRATE_MESH_STALL_TIMEOUT',
  'SUBSTRATE_SPOT_CHECK_RATE',
  'SUBSTRATE_RELAY',
  'SUBSTRATE_RELAY_MAX_RESERVATIONS',
  'SUBSTRATE_RELAY_CLIENT',
  'SUBSTRATE_RANDOM_WALK',
  'SUBSTRATE_LEDGER_KEEP_ALIVE',
]

function envLayer(env: NodeJS.ProcessEnv): Layer {
  const layer: Layer = { source: 'env', code: 'E_CONFIG', settings: new Map() }
  for (const name of envVars) {
    const value = env[name]
    // An empty variable counts as unset: `SUBSTRATE_PORT= substrate serve` is easy to write by accident.
    if (value !== undefined && value !== '') fromNamed(layer, name, value, name)
  }
  // Hugging Face's own variable, so a mirror already set for other tools works here too.
  if (env.HF_ENDPOINT) set(layer, 'models.hfEndpoint', env.HF_ENDPOINT, 'HF_ENDPOINT')
  return layer
}

function flagLayer(flags: Record<string, string | undefined>, home: string | undefined): Layer {
  const layer: Layer = { source: 'flag', code: 'E_INVALID_ARGUMENT', settings: new Map() }
  for (const [name, value] of Object.entries(flags)) {
    if (value !== undefined) fromNamed(layer, name, value, `--${name.replace(/^-+/, '')}`)
  }
  if (home !== undefined) layer.settings.set('home', { raw: home, origin: 'the home option' })
  return layer
}

function fileLayer(path: string): Layer {
  const layer: Layer = { source: 'file', code: 'E_CONFIG', settings: new Map() }
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return layer
    throw new SubstrateError('E_CONFIG', `cannot read ${path}: ${(err as Error).message}`, { cause: err })
  }
  let doc: Record<string, unknown>
  try {
    doc = parseToml(text)
  } catch (err) {
    if (!(err instanceof TomlError)) throw err
    const reason = err.message.split('\n')[0]?.replace(/^Invalid TOML document: /, '')
    throw new SubstrateError('E_CONFIG', `${path}: line ${err.line}, column ${err.column}: ${reason}`, {
      hint: `fix the file (it is TOML) or remove it to use the defaults:\n${err.codeblock}`,
      cause: err,
    })
  }
  for (const [section, table] of Object.entries(doc)) {
    if (section === 'home') {
      throw new SubstrateError('E_CONFIG', `${path}: home cannot be set in a file that lives inside home`, {
        hint: 'set SUBSTRATE_HOME or pass --home instead',
      })
    }
    const isTable =
      typeof table === 'object' && table !== null && !Array.isArray(table) && !(table instanceof Date)
    for (const [field, value] of isTable ? Object.entries(table) : [['', table] as const]) {
      const key = isTable ? dottedNames.get(normalise(`${section}.${field}`)) : undefined
      if (key === undefined) {
        throw new SubstrateError(
          'E_CONFIG',
          `${path}: unknown key ${isTable ? `${section}.${field}` : section}`,
          {
            hint: `config keys are: ${configKeys.filter((k) => k !== 'home').join(', ')}`,
          },
        )
      }
      set(layer, key, value, path)
    }
  }
  return layer
}

const numericKeys = new Set<ConfigKey>([
  'api.port',
  'runtime.threads',
  'runtime.keepAlive',
  'runtime.parallel',
  'runtime.contextSize',
  'runtime.maxLoadedModels',
  'mesh.jobSlots',
  'models.quota',
  'mesh.stallTimeout',
  'runtime.streamWindow',
  'mesh.relayMaxReservations',
  'mesh.randomWalk',
  'mesh.ledgerKeepAlive',
])

/** Validates one value in its layer and returns it ready for configSchema. */
function checkSetting(layer: Layer, key: ConfigKey, setting: Setting): unknown {
  const { schema, expect } = leafSchemas[key]
  let raw = setting.raw
  // Env and flags only carry strings; a file has real TOML integers and must use them.
  if (
    layer.source !== 'file' &&
    numericKeys.has(key) &&
    typeof raw === 'string' &&
    /^\s*-?\d+\s*$/.test(raw)
  ) {
    raw = Number(raw)
  }
  if (key === 'log.level' || key === 'sandbox.backend')
    raw = typeof raw === 'string' ? raw.toLowerCase() : raw
  if (schema.safeParse(raw).success) return raw
  // Never echo a token back: it would end up in terminal scrollback or a log.
  const got = key === 'api.token' ? '' : ` (got ${JSON.stringify(setting.raw)})`
  throw new SubstrateError(layer.code, `${setting.origin}: ${key} must be ${expect}${got}`)
}

export function loadConfig(options: LoadConfigOptions = {}): Config {
  const flags = flagLayer(options.flags ?? {}, options.home)
  const envs = envLayer(options.env ?? process.env)
  // home decides where config.toml is, so it is settled first, from env and flags only.
  const homeLayer = [flags, envs].find((layer) => layer.settings.has('home'))
  const homeSetting = homeLayer?.settings.get('home')
  const home =
    homeLayer === undefined || homeSetting === undefined
      ? defaultHome({})
      : leafSchemas.home.schema.parse(checkSetting(homeLayer, 'home', homeSetting))
  const sources = new Map<ConfigKey, ConfigSource>(configKeys.map((k) => [k, 'default']))
  sources.set('home', homeLayer?.source ?? 'default')

  const input: Record<string, Record<string, unknown>> = {
    api: {},
    runtime: {},
    log: {},
    sandbox: {},
    mesh: {},
    models: {},
  }
  const origins = new Map<ConfigKey, string>()
  for (const layer of [fileLayer(join(home, 'config.toml')), envs, flags]) {
    for (const [key, setting] of layer.settings) {
      if (key === 'home') continue
      const [section, field] = key.split('.') as [string, string]
      input[section]![field] = checkSetting(layer, key, setting)
      sources.set(key, layer.source)
      origins.set(key, setting.origin)
    }
  }
  const host = String(input.api!.host ?? '127.0.0.1')
  if (input.api!.token === undefined && !isLoopbackHost(host)) {
    const where = origins.get('api.host') ?? 'config'
    throw new SubstrateError(
      'E_CONFIG',
      `${where}: api.host ${host} is not a loopback address, so api.token is required`,
      { hint: nonLoopbackHint },
    )
  }
  const config = configSchema.parse({ ...input, home })
  sourcesByConfig.set(config, sources)
  return config
}

function displayValue(config: Config, key: ConfigKey): string {
  if (key === 'home') return config.home
  if (key === 'api.token') return config.api.token === undefined ? '(not set)' : '<redacted>'
  if (key === 'runtime.keepAlive') return formatDuration(config.runtime.keepAlive)
  if (key === 'models.allow' || key === 'models.deny') {
    const list = config.models[key === 'models.allow' ? 'allow' : 'deny']
    return list.length === 0 ? '(none)' : list.join(',')
  }
  if (key === 'models.quota') return config.models.quota === 0 ? '0 (no limit)' : String(config.models.quota)
  if (key === 'mesh.stallTimeout') return formatDuration(config.mesh.stallTimeout)
  if (key === 'mesh.ledgerKeepAlive') return formatDuration(config.mesh.ledgerKeepAlive)
  if (key === 'runtime.streamWindow') return formatDuration(config.runtime.streamWindow)
  if (key === 'runtime.llamaServer') return config.runtime.llamaServer ?? '(the built one)'
  if (key === 'mesh.listen' || key === 'mesh.bootstrap') {
    const list = config.mesh[key === 'mesh.listen' ? 'listen' : 'bootstrap']
    return list.length === 0 ? '(none)' : list.join(',')
  }
  const [section, field] = key.split('.') as [string, string]
  return String((config as unknown as Record<string, Record<string, unknown>>)[section]?.[field])
}

/** Every key with its value (the token redacted) and the layer it came from. */
export function describeConfig(
  config: Config,
): Array<{ key: ConfigKey; value: string; source: ConfigSource }> {
  const sources = sourcesByConfig.get(config)
  return configKeys.map((key) => ({
    key,
    value: displayValue(config, key),
    source: sources?.get(key) ?? 'default',
  }))
}
