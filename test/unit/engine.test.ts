// Choosing the engine (src/runtime/engine.ts) against a build cache of our own: auto falls
// back to node-llama-cpp until a build is there, an explicit llama-server without one is a
// typed refusal with the command that fixes it, and a second build waits for the first.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { parseConfig } from '../../src/config/schema.ts'
import { SubstrateError } from '../../src/errors.ts'
import { silentLogger } from '../../src/logger.ts'
import { createNode } from '../../src/node.ts'
import { buildEngine, builtEnginePath, engineCacheDir, resolveEngine } from '../../src/runtime/engine.ts'

describe('engine choice', () => {
  let cache: string
  const saved = process.env.SUBSTRATE_ENGINE_CACHE
  before(() => {
    cache = mkdtempSync(join(tmpdir(), 'substrate-engine-'))
    process.env.SUBSTRATE_ENGINE_CACHE = cache
  })
  after(() => {
    if (saved === undefined) delete process.env.SUBSTRATE_ENGINE_CACHE
    else process.env.SUBSTRATE_ENGINE_CACHE = saved
    rmSync(cache, { recursive: true, force: true })
  })

  test('the build cache is per llama.cpp version and architecture, under SUBSTRATE_ENGINE_CACHE', () => {
    assert.ok(engineCacheDir().startsWith(cache))
    assert.match(engineCacheDir(), new RegExp(`llama-server-v[\\w.]+-${process.arch}$`))
  })

  test('without a build: auto is node-llama-cpp, llama-server is refused with the fix', () => {
    assert.deepEqual(resolveEngine('auto'), { kind: 'node-llama-cpp' })
    assert.deepEqual(resolveEngine('node-llama-cpp'), { kind: 'node-llama-cpp' })
    assert.throws(
      () => resolveEngine('llama-server'),
      (err: unknown) =>
        err instanceof SubstrateError &&
        err.code === 'E_ENGINE_UNAVAILABLE' &&
        (err.hint ?? '').includes('substrate engine build'),
    )
  })

  test('a daemon told to use llama-server that is not built refuses to start, saying why', async () => {
    const home = mkdtempSync(join(tmpdir(), 'substrate-engine-home-'))
    try {
      const config = parseConfig({
        home,
        api: { host: '127.0.0.1', port: 0 },
        mesh: { enabled: false },
        sandbox: { backend: 'none' },
        runtime: { engine: 'llama-server' },
      })
      await assert.rejects(createNode(config, { logger: silentLogger }), { code: 'E_ENGINE_UNAVAILABLE' })
    } finally {
      rmSync(home, { recursive: true, force: true })
    }
  })

  test('a built binary is picked up by auto; a non-executable file is not', () => {
    const path = builtEnginePath()
    mkdirSync(dirname(path), { recursive: true })
    writeFileSync(path, '#!/bin/sh\n')
    chmodSync(path, 0o644)
    assert.equal(resolveEngine('auto').kind, 'node-llama-cpp')
    chmodSync(path, 0o755)
    assert.deepEqual(resolveEngine('auto'), { kind: 'llama-server', path })
    assert.deepEqual(resolveEngine('node-llama-cpp'), { kind: 'node-llama-cpp' }, 'an explicit choice wins')
    rmSync(path)
  })

  test('a second build while one runs is refused, naming the first', async () => {
    const sleeper = spawn('sleep', ['30'])
    try {
      mkdirSync(engineCacheDir(), { recursive: true })
      writeFileSync(join(engineCacheDir(), 'build.lock'), String(sleeper.pid))
      await assert.rejects(
        buildEngine({ logger: silentLogger }),
        (err: unknown) =>
          err instanceof SubstrateError &&
          err.code === 'E_ENGINE_BUILD' &&
          err.message.includes(String(sleeper.pid)),
      )
    } finally {
      sleeper.kill()
      rmSync(join(engineCacheDir(), 'build.lock'), { force: true })
    }
  })
})
