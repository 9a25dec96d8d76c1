// The one definition of what a valid configuration is. Every layer (defaults, config.toml,
// SUBSTRATE_* env, CLI flags) is checked key by key against the leaf schemas below, so an
// error can name the layer and key; the assembled object then goes through configSchema,
// which also enforces the rules that span keys (a public bind needs a token).
import { isIPv4, isIPv6 } from 'node:net'
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import { z } from 'zod'
import { SubstrateError } from '../errors.ts'

export const configKeys = [
  'home',
  'api.host',
  'api.port',
  'api.token',
  'runtime.threads',
  'runtime.keepAlive',
  'runtime.parallel',
  'runtime.contextSize',
  'runtime.maxLoadedModels',
  'runtime.engine',
  'runtime.llamaServer',
  'runtime.engineBuild',
  'runtime.streamWindow',
  'log.level',
  'sandbox.backend',
  'mesh.enabled',
  'mesh.listen',
  'mesh.bootstrap',
  'mesh.mdns',
  'mesh.jobSlots',
  'models.allow',
  'models.deny',
  'models.quota',
  'models.hfEndpoint',
  'models.ollamaRegistry',
  'mesh.stallTimeout',
  'mesh.spotCheckRate',
  'mesh.relayServe',
  'mesh.relayMaxReservations',
  'mesh.relayClient',
  'mesh.randomWalk',
  'mesh.ledgerKeepAlive',
] as const
export type ConfigKey = (typeof configKeys)[number]

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
const durationExpect = 'a duration like "5m", "30s", "1h30m", "250ms", "0" (unload at once) or "-1" (forever)'

/**
 * Parses a keep-alive style duration into milliseconds. Follows Ollama's keep_alive: a bare
 * number is seconds, any negative value means forever (Infinity), "0" means at once.
 */
export function parseDuration(value: string | number): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new Error(`expected ${durationExpect}, got ${value}`)
    return value < 0 ? Infinity : Math.round(value * 1000)
  }
  const text = value.trim()
  if (/^[+-]?\d+(\.\d+)?$/.test(text)) return parseDuration(Number(text))
  const match = /^([+-]?)((?:\d+(?:\.\d+)?(?:ms|s|m|h))+)$/.exec(text)
  if (match === null) throw new Error(`expected ${durationExpect}, got ${JSON.stringify(value)}`)
  let ms = 0
  for (const part of match[2]!.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) {
    ms += Number(part[1]) * durationUnits[part[2]!]!
  }
  if (match[1] === '-' && ms > 0) return Infinity
  return Math.round(ms)
}

/** A duration (parseDuration) in [min, max] milliseconds, `message` otherwise. */
function durationBetween(min: number, max: number, message: string) {
  return z.union([z.string(), z.number()]).transform((v, ctx) => {
    let ms: number
    try {
      ms = parseDuration(v)
    } catch {
      ms = Number.NaN
    }
    if (!(ms >= min && ms <= max && Number.isFinite(ms))) {
      ctx.issues.push({ code: 'custom', message, input: v })
      return z.NEVER
    }
    return ms
  })
}

/** The inverse of parseDuration for display: 300000 → "5m", Infinity → "-1 (forever)". */
export function formatDuration(ms: number): string {
  if (ms === Infinity) return '-1 (forever)'
  if (ms === 0) return '0'
  let rest = ms
  let out = ''
  for (const [unit, size] of [
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    const n = Math.floor(rest / size)
    if (n > 0) out += `${n}${unit}`
    rest -= n * size
  }
  return rest > 0 ? `${out}${rest}ms` : out
}

// RFC 1123 host names; IP literals are checked separately by node:net.
const hostnamePattern =
  /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i

/** True for 127.0.0.0/8, ::1 (and its IPv4-mapped form) and "localhost". */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, '$1').toLowerCase()
  if (h === 'localhost') return true
  if (isIPv4(h)) return h.startsWith('127.')
  if (!isIPv6(h)) return false
  // URL canonicalises every spelling of an IPv6 address (0:0:0:0:0:0:0:1 → [::1]).
  const canonical = new URL(`http://[${h}]/`).hostname
  return canonical === '[::1]' || /^\[::ffff:7f[0-9a-f]{2}:[0-9a-f]{1,4}\]$/.test(canonical)
}

const positiveInt = z.number().int().min(1)

/** A share from 0 to 1, also as the decimal string env and flags carry ("0.05"). */
const shareSchema = z
  .union([
    z.number(),
    z
      .string()
      .trim()
      .regex(/^\d+(\.\d+)?$/)
      .transform(Number),
  ])
  .pipe(z.number().min(0).max(1))

/** true/false, also as the strings env and flags carry ("1", "yes", "off", …). */
const booleanSchema = z.union([
  z.boolean(),
  z
    .string()
    .transform((v) => v.trim().toLowerCase())
    .pipe(z.enum(['true', 'false', '1', '0', 'yes', 'no', 'on', 'off']))
    .transform((v) => v === 'true' || v === '1' || v === 'yes' || v === 'on'),
])

// A TCP or WebSockets (TCP + /ws) multiaddr over IPv4, IPv6 or DNS; bootstrap peers must
// also name the peer.
const tcpMultiaddr =
  /^\/(ip4|ip6|dns|dns4|dns6)\/[^/\s]+\/tcp\/\d{1,5}(\/ws)?(\/p2p\/[1-9A-HJ-NP-Za-km-z]{40,60})?$/
const peerMultiaddr = /\/p2p\/[1-9A-HJ-NP-Za-km-z]{40,60}$/

/** A list of multiaddrs: a TOML array, or one comma-separated string (env and flags). */
function multiaddrList(mustNamePeer: boolean) {
  return z
    .union([z.string(), z.array(z.string())])
    .transform((v) => (typeof v === 'string' ? v.split(',') : v).map((a) => a.trim()).filter((a) => a !== ''))
    .pipe(
      z
        .array(
          z
            .string()
            .regex(tcpMultiaddr)
            .refine((a) => !mustNamePeer || peerMultiaddr.test(a)),
        )
        .max(64),
    )
}

/** Model name globs: a TOML array, or one comma-separated string (env and flags). */
const globList = z
  .union([z.string(), z.array(z.string())])
  .transform((v) => (typeof v === 'string' ? v.split(',') : v).map((g) => g.trim()).filter((g) => g !== ''))
  .pipe(z.array(z.string().max(500)).max(1000))

const sizeUnits: Record<string, number> = {
  '': 1,
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
}
const sizeExpect = 'a size like "50GiB", "500MB" or a byte count; 0 means no limit'

/** "50GiB" → bytes; a bare number is bytes. */
export function parseSize(value: string | number): number {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) throw new Error(sizeExpect)
    return value
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(value)
  const unit = m === null ? undefined : sizeUnits[m[2]!.toLowerCase()]
  if (m === null || unit === undefined) throw new Error(sizeExpect)
  return Math.round(Number(m[1]) * unit)
}

const httpUrl = z
  .string()
  .refine((u) => URL.canParse(u) && /^https?:$/.test(new URL(u).protocol))
  .transform((u) => u.replace(/\/+$/, ''))

/** One schema per key, and the phrase that completes "<key> must be …" when it fails. */
export const leafSchemas = {
  home: {
    schema: z
      .string()
      .min(1)
      .transform((p) => resolve(p.startsWith('~/') ? join(homedir(), p.slice(2)) : p)),
    expect: 'a directory path',
  },
  'api.host': {
    schema: z
      .string()
      .transform((h) => h.replace(/^\[(.*)\]$/, '$1'))
      .refine((h) => isIPv4(h) || isIPv6(h) || hostnamePattern.test(h)),
    expect: 'a host name or IP address without a port (like "127.0.0.1" or "::1")',
  },
  'api.port': {
    schema: z.number().int().min(0).max(65535),
    expect: 'an integer between 0 (any free port) and 65535',
  },
  'api.token': { schema: z.string().regex(/^\S+$/), expect: 'a non-empty string without spaces' },
  'runtime.threads': {
    schema: z.number().int().min(0),
    expect: 'an integer: 0 (auto: measured per model at load) or a thread count',
  },
  'runtime.keepAlive': {
    schema: z.union([z.string(), z.number()]).transform((v, ctx) => {
      try {
        return parseDuration(v)
      } catch {
        ctx.issues.push({ code: 'custom', message: durationExpect, input: v })
        return z.NEVER
      }
    }),
    expect: durationExpect,
  },
  'runtime.parallel': { schema: positiveInt, expect: 'an integer of at least 1' },
  'runtime.contextSize': { schema: positiveInt, expect: 'an integer of at least 1 (tokens per sequence)' },
  'runtime.maxLoadedModels': { schema: positiveInt, expect: 'an integer of at least 1' },
  'runtime.engine': {
    schema: z.enum(['auto', 'llama-server', 'node-llama-cpp']),
    expect: 'one of auto (llama-server once built, node-llama-cpp until then), llama-server, node-llama-cpp',
  },
  'runtime.llamaServer': {
    schema: z.string().refine((p) => p.startsWith('/')),
    expect: 'the absolute path of a llama-server binary (default: the one `substrate engine build` makes)',
  },
  'runtime.engineBuild': { schema: booleanSchema, expect: 'true or false' },
  'runtime.streamWindow': {
    schema: durationBetween(0, 1000, 'a duration from 0 to 1s'),
    expect: 'a duration from 0 to 1s, like "10ms" (0: only tokens that arrive together share a chunk)',
  },
  'log.level': {
    schema: z.enum(['debug', 'info', 'warn', 'error']),
    expect: 'one of debug, info, warn, error',
  },
  'sandbox.backend': { schema: z.enum(['bwrap', 'gvisor', 'none']), expect: 'one of bwrap, gvisor, none' },
  'mesh.enabled': { schema: booleanSchema, expect: 'true or false' },
  'mesh.listen': {
    schema: multiaddrList(false),
    expect:
      'TCP or WebSockets multiaddrs, comma-separated (like "/ip4/127.0.0.1/tcp/4435" or "/ip4/0.0.0.0/tcp/4436/ws")',
  },
  'mesh.bootstrap': {
    schema: multiaddrList(true),
    expect: 'TCP or WebSockets multiaddrs ending in /p2p/<peer id>, comma-separated',
  },
  'mesh.mdns': { schema: booleanSchema, expect: 'true or false' },
  'mesh.jobSlots': { schema: positiveInt, expect: 'an integer of at least 1 (mesh jobs served at once)' },
  'models.allow': {
    schema: globList,
    expect: 'model globs, comma-separated (like "hf:bartowski/*,ollama:*")',
  },
  'models.deny': { schema: globList, expect: 'model globs, comma-separated (like "ollama:*-uncensored*")' },
  'models.quota': {
    schema: z.union([z.string(), z.number()]).transform((v, ctx) => {
      try {
        return parseSize(v)
      } catch {
        ctx.issues.push({ code: 'custom', message: sizeExpect, input: v })
        return z.NEVER
      }
    }),
    expect: sizeExpect,
  },
  'models.hfEndpoint': { schema: httpUrl, expect: 'an http(s) URL like "https://huggingface.co"' },
  'models.ollamaRegistry': { schema: httpUrl, expect: 'an http(s) URL like "https://registry.ollama.ai"' },
  'mesh.stallTimeout': {
    schema: durationBetween(100, Infinity, 'a duration of at least 100ms'),
    expect: 'a duration of at least 100ms, like "60s" or "2m"',
  },
  'mesh.spotCheckRate': {
    schema: shareSchema,
    expect: 'a number from 0 to 1 (the share of our receipts sent for a spot check)',
  },
  'mesh.relayServe': { schema: booleanSchema, expect: 'true or false' },
  'mesh.relayMaxReservations': {
    schema: z.number().int().min(1).max(1024),
    expect: 'an integer from 1 to 1024 (relay reservations held for other nodes at once)',
  },
  'mesh.relayClient': { schema: booleanSchema, expect: 'true or false' },
  'mesh.randomWalk': {
    schema: z.number().int().min(0).max(1000),
    expect: 'an integer from 0 (off) to 1000 (walk the DHT while fewer peers are connected)',
  },
  'mesh.ledgerKeepAlive': {
    schema: durationBetween(1000, 3_600_000, 'a duration from 1s to 1h'),
    expect: 'a duration from 1s to 1h, like "40s" (unchanged ledger heads are re-announced this often)',
  },
} as const satisfies Record<ConfigKey, { schema: z.ZodType; expect: string }>

export function defaultHome(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.SUBSTRATE_HOME
  return fromEnv !== undefined && fromEnv !== '' ? resolve(fromEnv) : join(homedir(), '.substrate')
}

export const nonLoopbackHint =
  'set api.token (SUBSTRATE_TOKEN or --token) so clients must send "Authorization: Bearer <token>", ' +
  'or bind to 127.0.0.1'

export const configSchema = z
  .object({
    home: leafSchemas.home.schema.prefault(() => defaultHome()),
    api: z
      .object({
        host: leafSchemas['api.host'].schema.prefault('127.0.0.1'),
        port: leafSchemas['api.port'].schema.default(11435),
        token: leafSchemas['api.token'].schema.optional(),
      })
      .prefault({}),
    runtime: z
      .object({
        /** 0 = auto: the runner measures 1 thread against all cores on small models and keeps the faster. */
        threads: leafSchemas['runtime.threads'].schema.default(0),
        /** Milliseconds an idle model stays loaded; Infinity means forever, 0 unloads at once. */
        keepAlive: leafSchemas['runtime.keepAlive'].schema.prefault('5m'),
        /** Concurrent sequences per loaded model. */
        parallel: leafSchemas['runtime.parallel'].schema.default(4),
        /** Context window per sequence, in tokens. */
        contextSize: leafSchemas['runtime.contextSize'].schema.default(4096),
        maxLoadedModels: leafSchemas['runtime.maxLoadedModels'].schema.default(2),
        /** Which engine runs models (src/runtime/engine.ts). */
        engine: leafSchemas['runtime.engine'].schema.default('auto'),
        llamaServer: leafSchemas['runtime.llamaServer'].schema.optional(),
        /** With engine auto: build llama-server in the background when the daemon starts and none is built. */
        engineBuild: leafSchemas['runtime.engineBuild'].schema.default(true),
        /**
         * Milliseconds a streamed token may wait to share a chunk with the tokens after it (0:
         * only tokens that arrive together share one). Each chunk costs a message on every hop.
         */
        streamWindow: leafSchemas['runtime.streamWindow'].schema.prefault('0'),
      })
      .prefault({}),
    log: z.object({ level: leafSchemas['log.level'].schema.default('info') }).prefault({}),
    sandbox: z.object({ backend: leafSchemas['sandbox.backend'].schema.default('bwrap') }).prefault({}),
    mesh: z
      .object({
        /** Join the mesh: serve peers' jobs and send ours to them when a model is not here. */
        enabled: leafSchemas['mesh.enabled'].schema.default(true),
        /**
         * Loopback unless configured: a node must be told to offer its compute beyond this
         * machine. Port 0 lets several daemons share a machine; /substrate/v1/status shows
         * the address really bound, for others to bootstrap to.
         */
        listen: leafSchemas['mesh.listen'].schema.prefault(['/ip4/127.0.0.1/tcp/0']),
        bootstrap: leafSchemas['mesh.bootstrap'].schema.prefault([]),
        /**
         * Off by default: with the loopback listener nothing on the LAN could dial us anyway,
         * and announcing a compute-serving node to the whole LAN should be a choice. Turn on
         * together with a LAN listen address.
         */
        mdns: leafSchemas['mesh.mdns'].schema.default(false),
        /** Mesh jobs served at once: half the default parallel sequences, so local use keeps room. */
        jobSlots: leafSchemas['mesh.jobSlots'].schema.default(2),
        /**
         * Longest silence from a worker between two frames of a job before the job moves on
         * to another peer. The wait for the first token (a model load) has its own, longer bound.
         */
        stallTimeout: leafSchemas['mesh.stallTimeout'].schema.prefault('30s'),
        /** Share of the receipts we countersign that a third node re-checks (DESIGN.md step 8; governance later). */
        spotCheckRate: leafSchemas['mesh.spotCheckRate'].schema.default(0.05),
        /**
         * Serve as a circuit relay for nodes behind NATs: opt-in, since it spends this node's
         * bandwidth on others' traffic. Each relayed connection is limited (10 min, 64 MiB).
         */
        relayServe: leafSchemas['mesh.relayServe'].schema.default(false),
        relayMaxReservations: leafSchemas['mesh.relayMaxReservations'].schema.default(32),
        /** Reserve a slot on a relay found in the mesh, so a node behind a NAT can be dialled. */
        relayClient: leafSchemas['mesh.relayClient'].schema.default(true),
        /** Walk the DHT from random keys while fewer than this many peers are connected (0: off). */
        randomWalk: leafSchemas['mesh.randomWalk'].schema.default(8),
        /**
         * Milliseconds after our last ledger heads announcement that unchanged heads are
         * announced again (±25%): the backstop for a lost one; every change is announced at once.
         */
        ledgerKeepAlive: leafSchemas['mesh.ledgerKeepAlive'].schema.prefault('40s'),
      })
      .prefault({}),
    models: z
      .object({
        /** Globs over a model's source, name and digest; empty = everything not denied. */
        allow: leafSchemas['models.allow'].schema.prefault([]),
        deny: leafSchemas['models.deny'].schema.prefault([]),
        /** Bytes the model store may hold; 0 = no limit. */
        quota: leafSchemas['models.quota'].schema.prefault(0),
        /** HF_ENDPOINT (Hugging Face's own variable) sets it too, so a mirror set for other tools works here. */
        hfEndpoint: leafSchemas['models.hfEndpoint'].schema.prefault('https://huggingface.co'),
        ollamaRegistry: leafSchemas['models.ollamaRegistry'].schema.prefault('https://registry.ollama.ai'),
      })
      .prefault({}),
  })
  .superRefine((config, ctx) => {
    if (config.api.token === undefined && !isLoopbackHost(config.api.host)) {
      ctx.addIssue({
        code: 'custom',
        path: ['api', 'host'],
        message: `api.host ${config.api.host} is not a loopback address, so api.token is required`,
      })
    }
  })

export type Config = z.output<typeof configSchema>
export type ConfigInput = z.input<typeof configSchema>

/** Validates a whole config object (e.g. built in code or in tests) into a Config. */
export function parseConfig(input: unknown): Config {
  const result = configSchema.safeParse(input)
  if (result.success) return result.data
  const issue = result.error.issues[0]
  const key = issue?.path.join('.') ?? ''
  const expect = (leafSchemas as Record<string, { expect: string } | undefined>)[key]?.expect
  const message =
    issue?.code === 'custom' ? issue.message : expect ? `${key} must be ${expect}` : (issue?.message ?? '')
  throw new SubstrateError('E_CONFIG', `invalid config: ${message}`, {
    hint: issue?.code === 'custom' && key === 'api.host' ? nonLoopbackHint : undefined,
  })
}
