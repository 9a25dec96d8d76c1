// Choosing the sandbox: a bwrap that cannot start its self-test leaves the daemon serving
// local requests unsandboxed, with one warning that says why; the limits a runner gets
// follow its model and threads.

import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { estimateModelMemory } from '../../src/hardware/detect.ts'
import { createLogger } from '../../src/logger.ts'
import { detectCgroups } from '../../src/sandbox/cgroups.ts'
import { cpuQuota, createRunnerSpawner, runnerMemoryLimit } from '../../src/sandbox/select.ts'

test('a sandbox whose self-test fails falls back to local-only, unenforced, and says why once', async () => {
  const lines: string[] = []
  const logger = createLogger({ write: (line) => lines.push(line) })
  // pids.max = 1: bwrap cannot fork into its namespaces, a real failure of the start-up probe
  const spawner = await createRunnerSpawner({ logger }, { backend: 'bwrap', pids: 1 })
  const status = spawner.describe()
  assert.equal(status.requested, 'bwrap')
  assert.equal(status.active, 'none')
  assert.equal(status.enforced, false)
  assert.match(status.reason ?? '', /test process in the sandbox failed/)
  const warnings = lines.filter((l) => l.includes('WARN'))
  assert.equal(warnings.length, 1, lines.join('\n'))
  assert.match(warnings[0] ?? '', /NOT sandboxed: this node serves local requests only/)
})

test('the memory ceiling is the load estimate with headroom; the CPU quota is threads plus one', () => {
  const spec = { modelPath: '/nonexistent.gguf', threads: 1, contextSize: 2048, parallel: 4 }
  const estimate = estimateModelMemory({ fileSize: 0, contextLength: 2048, parallel: 4 })
  assert.ok(runnerMemoryLimit(spec) > estimate)
  const cores = availableParallelism()
  assert.equal(cpuQuota(1), Math.min(cores, 2))
  assert.equal(cpuQuota(0), cores, 'a runner that picks its threads may use every core')
  assert.equal(cpuQuota(cores), cores)
})

test('a new daemon removes the empty runner groups a killed daemon left behind', () => {
  const support = detectCgroups()
  assert.notEqual(support.version, 0, JSON.stringify(support))
  const parents =
    support.version === 2 ? [support.group] : support.version === 1 ? [support.memory, support.pids] : []
  const deadPid = spawnSync('true').pid // exited: nobody holds its groups any more
  const stale = parents.map((p) => join(p, `runner-${deadPid}-1-test`))
  for (const dir of stale) mkdirSync(dir)
  detectCgroups()
  assert.deepEqual(
    stale.filter((d) => existsSync(d)),
    [],
  )
})
