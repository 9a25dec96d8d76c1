import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { describeConfig, isConfigFlag, loadConfig, parseHostPort } from '../../src/config/load.ts'
import { configSchema, parseConfig, parseDuration } from '../../src/config/schema.ts'
import { SubstrateError } from '../../src/errors.ts'

let home: string
before(() => {
  home = mkdtempSync(join(tmpdir(), 'substrate-config-'))
})
after(() => {
  rmSync(home, { recursive: true, force: true })
})

/** A fresh home per test, so one test's config.toml never leaks into another. */
function homeWith(toml?: string): string {
  const dir = mkdtempSync(join(home, 'h-'))
  if (toml !== undefined) writeFileSync(join(dir, 'config.toml'), toml)
  return dir
}

function rejects(fn: () => unknown, code: string, message: RegExp | string): SubstrateError {
  try {
    fn()
  } catch (err) {
    assert.ok(err instanceof SubstrateError, `expected a SubstrateError, got ${String(err)}`)
    assert.equal(err.code, code)
    if (typeof message === 'string') assert.ok(err.message.includes(message), err.message)
    else assert.match(err.message, message)
    return err
  }
  assert.fail('expected an error')
}

const sourceOf = (config: ReturnType<typeof loadConfig>, key: string) =>
  describeConfig(config).find((entry) => entry.key === key)?.source

describe('loadConfig', () => {
  test('with nothing set every key has its default', () => {
    const dir = homeWith()
    const config = loadConfig({ env: { SUBSTRATE_HOME: dir } })
    assert.equal(config.home, dir)
    assert.deepEqual(config.api, { host: '127.0.0.1', port: 11435 })
    assert.equal(config.runtime.keepAlive, 5 * 60_000)
    assert.equal(config.runtime.parallel, 4)
    assert.equal(config.runtime.contextSize, 4096)
    assert.equal(config.runtime.maxLoadedModels, 2)
    assert.equal(config.runtime.threads, 0, '0 = auto: measured per model')
    assert.equal(config.log.level, 'info')
    assert.equal(config.sandbox.backend, 'bwrap')
  })

  test('flags override env, env overrides the file, the file overrides defaults', () => {
    const dir = homeWith('[api]\nport = 1001\n[runtime]\nparallel = 3\ncontext_size = 1024\n')
    const env = { SUBSTRATE_HOME: dir, SUBSTRATE_PORT: '1002', SUBSTRATE_PARALLEL: '5' }
    const config = loadConfig({ env, flags: { port: '1003' } })
    assert.equal(config.api.port, 1003)
    assert.equal(config.runtime.parallel, 5)
    assert.equal(config.runtime.contextSize, 1024)
    assert.equal(config.runtime.maxLoadedModels, 2)
  })

  test('describeConfig names the layer each value came from', () => {
    const dir = homeWith('[api]\nport = 1001\n[runtime]\nparallel = 3\ncontext_size = 1024\n')
    const env = { SUBSTRATE_HOME: dir, SUBSTRATE_PORT: '1002', SUBSTRATE_PARALLEL: '5' }
    const config = loadConfig({ env, flags: { port: '1003' } })
    assert.equal(sourceOf(config, 'home'), 'env')
    assert.equal(sourceOf(config, 'api.port'), 'flag')
    assert.equal(sourceOf(config, 'runtime.parallel'), 'env')
    assert.equal(sourceOf(config, 'runtime.contextSize'), 'file')
    assert.equal(sourceOf(config, 'runtime.maxLoadedModels'), 'default')
  })

  test('describeConfig redacts the token and shows keep-alive as a duration', () => {
    const config = loadConfig({ env: {}, home: homeWith(), flags: { token: 's3cret', 'keep-alive': '90s' } })
    const entries = describeConfig(config)
    assert.equal(entries.find((e) => e.key === 'api.token')?.value, '<redacted>')
    assert.ok(!JSON.stringify(entries).includes('s3cret'))
    assert.equal(entries.find((e) => e.key === 'runtime.keepAlive')?.value, '1m30s')
  })

  test('flags accept dotted keys and env-style names', () => {
    const flags = { 'api.port': '2000', 'runtime.keepAlive': '-1', SUBSTRATE_LOG_LEVEL: 'DEBUG' }
    const config = loadConfig({ env: {}, home: homeWith(), flags })
    assert.equal(config.api.port, 2000)
    assert.equal(config.runtime.keepAlive, Infinity)
    assert.equal(config.log.level, 'debug')
  })

  test('an empty environment variable counts as unset', () => {
    const config = loadConfig({ env: { SUBSTRATE_HOME: homeWith(), SUBSTRATE_PORT: '' } })
    assert.equal(config.api.port, 11435)
  })

  test('a bare number of keep-alive seconds in config.toml is read as seconds', () => {
    const config = loadConfig({ env: {}, home: homeWith('[runtime]\nkeep_alive = 300\n') })
    assert.equal(config.runtime.keepAlive, 300_000)
  })

  test('malformed TOML is refused with the line it broke on', () => {
    const dir = homeWith('[api]\nport = 1\nhost = = "x"\n')
    const err = rejects(
      () => loadConfig({ env: {}, home: dir }),
      'E_CONFIG',
      /config\.toml: line 3, column \d+/,
    )
    assert.ok(err.hint?.includes('host = = "x"'))
  })

  test('a bad value in config.toml names the file and key', () => {
    const dir = homeWith('[api]\nport = 70000\n')
    rejects(
      () => loadConfig({ env: {}, home: dir }),
      'E_CONFIG',
      'config.toml: api.port must be an integer between 0 (any free port) and 65535',
    )
  })

  test('a port written as a string in config.toml is refused', () => {
    rejects(() => loadConfig({ env: {}, home: homeWith('[api]\nport = "8080"\n') }), 'E_CONFIG', 'api.port')
  })

  test('an unknown key in config.toml is refused', () => {
    rejects(
      () => loadConfig({ env: {}, home: homeWith('[api]\nprot = 1\n') }),
      'E_CONFIG',
      'unknown key api.prot',
    )
  })

  test('home cannot be set inside config.toml', () => {
    rejects(() => loadConfig({ env: {}, home: homeWith('home = "/elsewhere"\n') }), 'E_CONFIG', 'home cannot')
  })

  test('a bad environment value names the variable and key', () => {
    const env = { SUBSTRATE_HOME: homeWith(), SUBSTRATE_THREADS: 'many' }
    rejects(() => loadConfig({ env }), 'E_CONFIG', 'SUBSTRATE_THREADS: runtime.threads must be an integer')
  })

  test('a bad keep-alive in the environment explains the duration format', () => {
    const env = { SUBSTRATE_HOME: homeWith(), SUBSTRATE_KEEP_ALIVE: '5 minutes' }
    rejects(
      () => loadConfig({ env }),
      'E_CONFIG',
      /SUBSTRATE_KEEP_ALIVE: runtime.keepAlive must be a duration like/,
    )
  })

  test('a bad flag value is an invalid argument naming the flag', () => {
    const flags = { sandbox: 'docker' }
    rejects(
      () => loadConfig({ env: {}, home: homeWith(), flags }),
      'E_INVALID_ARGUMENT',
      '--sandbox: sandbox.backend',
    )
  })

  test('an unknown flag is an invalid argument', () => {
    rejects(
      () => loadConfig({ env: {}, home: homeWith(), flags: { prot: '1' } }),
      'E_INVALID_ARGUMENT',
      '--prot',
    )
  })

  test('an invalid token is refused without echoing it', () => {
    const env = { SUBSTRATE_HOME: homeWith(), SUBSTRATE_TOKEN: 'has a space' }
    const err = rejects(() => loadConfig({ env }), 'E_CONFIG', 'SUBSTRATE_TOKEN: api.token')
    assert.ok(!err.message.includes('has a space'))
  })

  test('a non-loopback host without a token is refused with a hint', () => {
    const env = { SUBSTRATE_HOME: homeWith(), SUBSTRATE_HOST: '0.0.0.0' }
    const err = rejects(
      () => loadConfig({ env }),
      'E_CONFIG',
      'SUBSTRATE_HOST: api.host 0.0.0.0 is not a loopback',
    )
    assert.ok(err.hint?.includes('api.token'))
  })

  test('a non-loopback host with a token is accepted', () => {
    const env = { SUBSTRATE_HOME: homeWith(), SUBSTRATE_HOST: '0.0.0.0', SUBSTRATE_TOKEN: 'tok' }
    assert.equal(loadConfig({ env }).api.host, '0.0.0.0')
  })

  test('every loopback spelling is accepted without a token', () => {
    for (const host of ['127.0.0.1', '127.8.9.10', 'localhost', '::1', '[::1]', '0:0:0:0:0:0:0:1']) {
      assert.doesNotThrow(() => loadConfig({ env: {}, home: homeWith(), flags: { host } }), host)
    }
  })

  test('SUBSTRATE_HOST may carry a port, like OLLAMA_HOST', () => {
    const cases: Array<[string, string, number]> = [
      ['0.0.0.0:8080', '0.0.0.0', 8080],
      ['[::1]:9000', '::1', 9000],
      ['::1', '::1', 11435],
      ['http://127.0.0.1:9001/', '127.0.0.1', 9001],
      [':9002', '127.0.0.1', 9002],
      ['localhost', 'localhost', 11435],
    ]
    for (const [value, host, port] of cases) {
      const config = loadConfig({
        env: { SUBSTRATE_HOME: homeWith(), SUBSTRATE_HOST: value, SUBSTRATE_TOKEN: 't' },
      })
      assert.deepEqual([config.api.host, config.api.port], [host, port], value)
    }
  })

  test('SUBSTRATE_HOST and SUBSTRATE_PORT naming different ports is refused', () => {
    const env = { SUBSTRATE_HOME: homeWith(), SUBSTRATE_HOST: '127.0.0.1:8080', SUBSTRATE_PORT: '9090' }
    rejects(() => loadConfig({ env }), 'E_CONFIG', 'disagree about api.port')
  })

  test('a bad port inside SUBSTRATE_HOST names the variable', () => {
    const env = { SUBSTRATE_HOME: homeWith(), SUBSTRATE_HOST: '127.0.0.1:http' }
    rejects(
      () => loadConfig({ env }),
      'E_CONFIG',
      'SUBSTRATE_HOST: api.port must be an integer between 0 (any free port) and 65535',
    )
  })
})

describe('models config', () => {
  test('defaults: no rules, no quota, the public Hub and registry', () => {
    const config = loadConfig({ env: {}, home: homeWith() })
    assert.deepEqual(config.models, {
      allow: [],
      deny: [],
      quota: 0,
      hfEndpoint: 'https://huggingface.co',
      ollamaRegistry: 'https://registry.ollama.ai',
    })
  })

  test('config.toml sets lists, a quota with units and endpoints; HF_ENDPOINT is honoured', () => {
    const dir = homeWith(
      '[models]\nallow = ["hf:bartowski/*", "ollama:*"]\ndeny = ["*uncensored*"]\nquota = "1.5GiB"\nollama_registry = "http://127.0.0.1:5000/"\n',
    )
    const config = loadConfig({ env: { HF_ENDPOINT: 'https://hf-mirror.example' }, home: dir })
    assert.deepEqual(config.models.allow, ['hf:bartowski/*', 'ollama:*'])
    assert.deepEqual(config.models.deny, ['*uncensored*'])
    assert.equal(config.models.quota, Math.round(1.5 * 2 ** 30))
    assert.equal(config.models.ollamaRegistry, 'http://127.0.0.1:5000')
    assert.equal(config.models.hfEndpoint, 'https://hf-mirror.example')
    assert.equal(sourceOf(config, 'models.hfEndpoint'), 'env')
    assert.equal(describeConfig(config).find((e) => e.key === 'models.deny')?.value, '*uncensored*')
  })

  test('a bad quota or endpoint is refused, naming the key', () => {
    rejects(
      () => loadConfig({ env: {}, home: homeWith('[models]\nquota = "lots"\n') }),
      'E_CONFIG',
      'models.quota must be a size',
    )
    rejects(
      () => loadConfig({ env: { HF_ENDPOINT: 'ftp://x' }, home: homeWith() }),
      'E_CONFIG',
      'HF_ENDPOINT: models.hfEndpoint must be an http(s) URL',
    )
  })
})

describe('mesh config', () => {
  const peer = '12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo'

  test('defaults: mesh on, loopback listener on any port, no bootstrap, no mDNS, 2 job slots, 5 % spot checks, no relay serving', () => {
    const config = loadConfig({ env: {}, home: homeWith() })
    assert.deepEqual(config.mesh, {
      enabled: true,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: [],
      mdns: false,
      jobSlots: 2,
      stallTimeout: 30_000,
      spotCheckRate: 0.05,
      relayServe: false,
      relayMaxReservations: 32,
      relayClient: true,
      randomWalk: 8,
      ledgerKeepAlive: 40_000,
    })
  })

  test('relay, random walk and WebSockets listeners are configurable, and bad values are refused', () => {
    const config = loadConfig({
      env: { SUBSTRATE_RELAY: 'on', SUBSTRATE_RANDOM_WALK: '0' },
      home: homeWith('[mesh]\nrelay_max_reservations = 4\nrelay_client = false\n'),
      flags: { 'mesh-listen': '/ip4/0.0.0.0/tcp/4435,/ip4/0.0.0.0/tcp/4436/ws' },
    })
    assert.equal(config.mesh.relayServe, true)
    assert.equal(config.mesh.relayMaxReservations, 4)
    assert.equal(config.mesh.relayClient, false)
    assert.equal(config.mesh.randomWalk, 0)
    assert.deepEqual(config.mesh.listen, ['/ip4/0.0.0.0/tcp/4435', '/ip4/0.0.0.0/tcp/4436/ws'])
    rejects(
      () => loadConfig({ env: { SUBSTRATE_RELAY_MAX_RESERVATIONS: '0' }, home: homeWith() }),
      'E_CONFIG',
      'SUBSTRATE_RELAY_MAX_RESERVATIONS: mesh.relayMaxReservations must be an integer from 1 to 1024',
    )
    rejects(
      () => loadConfig({ env: {}, home: homeWith(), flags: { 'random-walk': '-1' } }),
      'E_INVALID_ARGUMENT',
      '--random-walk: mesh.randomWalk must be an integer from 0 (off)',
    )
    rejects(
      () => loadConfig({ env: { SUBSTRATE_RELAY: 'sometimes' }, home: homeWith() }),
      'E_CONFIG',
      'SUBSTRATE_RELAY: mesh.relayServe must be true or false',
    )
  })

  test('env carries lists comma-separated and booleans as words', () => {
    const env = {
      SUBSTRATE_MESH_LISTEN: '/ip4/0.0.0.0/tcp/4435, /ip6/::/tcp/4435',
      SUBSTRATE_BOOTSTRAP: `/ip4/10.0.0.2/tcp/4435/p2p/${peer},/dns4/node.example/tcp/1/p2p/${peer}`,
      SUBSTRATE_MDNS: 'yes',
      SUBSTRATE_MESH: 'off',
      SUBSTRATE_JOB_SLOTS: '3',
      SUBSTRATE_MESH_STALL_TIMEOUT: '1.5s',
    }
    const config = loadConfig({ env, home: homeWith() })
    assert.deepEqual(config.mesh.listen, ['/ip4/0.0.0.0/tcp/4435', '/ip6/::/tcp/4435'])
    assert.deepEqual(config.mesh.bootstrap, [
      `/ip4/10.0.0.2/tcp/4435/p2p/${peer}`,
      `/dns4/node.example/tcp/1/p2p/${peer}`,
    ])
    assert.equal(config.mesh.mdns, true)
    assert.equal(config.mesh.enabled, false)
    assert.equal(config.mesh.jobSlots, 3)
    assert.equal(config.mesh.stallTimeout, 1_500)
    assert.equal(sourceOf(config, 'mesh.bootstrap'), 'env')
  })

  test('config.toml takes real arrays and booleans; flags override it', () => {
    const dir = homeWith(
      `[mesh]\nlisten = ["/ip4/127.0.0.1/tcp/4435"]\nbootstrap = ["/ip4/127.0.0.1/tcp/4436/p2p/${peer}"]\nmdns = true\njob_slots = 4\n`,
    )
    const config = loadConfig({ env: {}, home: dir, flags: { 'mesh-listen': '/ip4/127.0.0.1/tcp/5000' } })
    assert.deepEqual(config.mesh.listen, ['/ip4/127.0.0.1/tcp/5000'])
    assert.deepEqual(config.mesh.bootstrap, [`/ip4/127.0.0.1/tcp/4436/p2p/${peer}`])
    assert.equal(config.mesh.mdns, true)
    assert.equal(config.mesh.jobSlots, 4)
    const shown = describeConfig(config).find((e) => e.key === 'mesh.listen')
    assert.deepEqual(shown, { key: 'mesh.listen', value: '/ip4/127.0.0.1/tcp/5000', source: 'flag' })
  })

  test('the spot-check rate is a share from 0 to 1, from env, file or flag', () => {
    assert.equal(
      loadConfig({ env: { SUBSTRATE_SPOT_CHECK_RATE: '0.25' }, home: homeWith() }).mesh.spotCheckRate,
      0.25,
    )
    assert.equal(
      loadConfig({ env: {}, home: homeWith('[mesh]\nspot_check_rate = 1\n') }).mesh.spotCheckRate,
      1,
    )
    assert.equal(
      loadConfig({ env: {}, home: homeWith(), flags: { 'spot-check-rate': '0' } }).mesh.spotCheckRate,
      0,
    )
    for (const bad of ['1.5', '-0.1', 'often']) {
      assert.throws(
        () => loadConfig({ env: { SUBSTRATE_SPOT_CHECK_RATE: bad }, home: homeWith() }),
        (err: unknown) =>
          err instanceof SubstrateError && err.code === 'E_CONFIG' && /spotCheckRate/.test(err.message),
      )
    }
  })

  test('a bootstrap address without /p2p/<id> is refused, naming the variable', () => {
    rejects(
      () => loadConfig({ env: { SUBSTRATE_BOOTSTRAP: '/ip4/10.0.0.2/tcp/4435' }, home: homeWith() }),
      'E_CONFIG',
      /SUBSTRATE_BOOTSTRAP: mesh.bootstrap must be TCP or WebSockets multiaddrs ending in \/p2p\/<peer id>/,
    )
  })

  test('a listen address that is not a TCP multiaddr and a bad boolean are refused', () => {
    rejects(
      () => loadConfig({ env: {}, home: homeWith(), flags: { 'mesh-listen': '127.0.0.1:4435' } }),
      'E_INVALID_ARGUMENT',
      '--mesh-listen: mesh.listen must be TCP or WebSockets multiaddrs',
    )
    rejects(
      () => loadConfig({ env: { SUBSTRATE_MDNS: 'maybe' }, home: homeWith() }),
      'E_CONFIG',
      'SUBSTRATE_MDNS: mesh.mdns must be true or false',
    )
  })

  test('a stall timeout must be a duration of at least 100ms', () => {
    for (const bad of ['0', '-1', '50ms', 'soon']) {
      rejects(
        () => loadConfig({ env: { SUBSTRATE_MESH_STALL_TIMEOUT: bad }, home: homeWith() }),
        'E_CONFIG',
        'SUBSTRATE_MESH_STALL_TIMEOUT: mesh.stallTimeout must be a duration of at least 100ms',
      )
    }
    const config = loadConfig({ env: {}, home: homeWith(), flags: { 'mesh-stall-timeout': '2m' } })
    assert.equal(config.mesh.stallTimeout, 120_000)
  })

  test('the ledger heads keep-alive is a duration from 1s to 1h, from any layer', () => {
    for (const bad of ['0', '-1', '500ms', '2h', 'often']) {
      rejects(
        () => loadConfig({ env: { SUBSTRATE_LEDGER_KEEP_ALIVE: bad }, home: homeWith() }),
        'E_CONFIG',
        'SUBSTRATE_LEDGER_KEEP_ALIVE: mesh.ledgerKeepAlive must be a duration from 1s to 1h',
      )
    }
    assert.equal(
      loadConfig({ env: {}, home: homeWith('[mesh]\nledger_keep_alive = "1m"\n') }).mesh.ledgerKeepAlive,
      60_000,
    )
    const config = loadConfig({ env: {}, home: homeWith(), flags: { 'ledger-keep-alive': '5s' } })
    assert.equal(config.mesh.ledgerKeepAlive, 5_000)
    assert.equal(describeConfig(config).find((e) => e.key === 'mesh.ledgerKeepAlive')?.value, '5s')
  })
})

describe('parseHostPort and isConfigFlag', () => {
  test('parseHostPort splits host and port', () => {
    assert.deepEqual(parseHostPort('10.0.0.1:1'), { host: '10.0.0.1', port: '1' })
    assert.deepEqual(parseHostPort('fe80::1'), { host: 'fe80::1' })
  })

  test('isConfigFlag knows config flags and nothing else', () => {
    assert.ok(isConfigFlag('--keep-alive'))
    assert.ok(isConfigFlag('api.port'))
    assert.ok(!isConfigFlag('debug'))
  })
})

describe('configSchema', () => {
  test('parses an empty object to the defaults', () => {
    const config = configSchema.parse({ home: '/tmp/x' })
    assert.equal(config.api.port, 11435)
    assert.equal(config.runtime.keepAlive, 300_000)
  })

  test('parseConfig refuses a public host without a token', () => {
    rejects(
      () => parseConfig({ home: '/tmp/x', api: { host: '0.0.0.0' } }),
      'E_CONFIG',
      'api.token is required',
    )
  })
})

describe('parseDuration', () => {
  test('reads Ollama keep-alive spellings into milliseconds', () => {
    const cases: Array<[string | number, number]> = [
      ['300', 300_000],
      ['5m', 300_000],
      ['1h30m', 5_400_000],
      ['250ms', 250],
      ['1.5s', 1500],
      ['0', 0],
      ['-1', Infinity],
      ['-5m', Infinity],
      [300, 300_000],
      [0, 0],
      [-1, Infinity],
    ]
    for (const [input, ms] of cases) assert.equal(parseDuration(input), ms, String(input))
  })

  test('refuses what is not a duration, saying what is expected', () => {
    for (const input of ['', 'm', '5x', '5 m', 'five', '5m5', Number.NaN, Infinity]) {
      assert.throws(() => parseDuration(input), /expected a duration like "5m"/, String(input))
    }
  })
})
