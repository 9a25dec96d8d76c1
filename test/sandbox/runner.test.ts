// The real runner (node-llama-cpp and all) works inside the full sandbox, Landlock included:
// it loads a model it can only reach through the inherited fd and answers a chat request.

import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, it } from 'node:test'
import { TINY_ANSWER, writeTinyModel } from '../../src/models/builtin.ts'
import { createLineSplitter, type FromRunner, type ToRunner } from '../../src/runtime/protocol.ts'
import { createBwrapSpawner, detectLandlock, findTool, SANDBOX_MODEL_PATH } from '../../src/sandbox/bwrap.ts'
import { buildLandlockHelper } from '../../src/sandbox/landlock.ts'
import { ensureRunnerUser } from '../../src/sandbox/runner-user.ts'

const GiB = 2 ** 30
let home: string

before(() => {
  assert.ok(findTool('bwrap'), 'bubblewrap is not installed: run `apt-get install -y bubblewrap` as root')
  // the full stack, Landlock included: the runner must load and answer under the ruleset
  assert.ok(buildLandlockHelper().ok, 'the Landlock helper must build')
  assert.equal(detectLandlock().enforced, true, JSON.stringify(detectLandlock()))
  // mkdtemp makes the directory 0700: the runner account could not open the model by path
  home = mkdtempSync(join(tmpdir(), 'substrate-sandbox-runner-'))
})
after(() => rmSync(home, { recursive: true, force: true }))

it('runs the real runner inside the sandbox: load, then a chat generation', {
  timeout: 120_000,
}, async () => {
  const modelPath = join(home, 'tiny.gguf')
  await writeTinyModel(modelPath)
  const runnerUser = process.getuid?.() === 0 ? await ensureRunnerUser() : undefined
  const spawnRunner = createBwrapSpawner({
    runnerUser,
    memoryBytes: 2 * GiB,
    pids: 256,
    tmpfsBytes: 64 * 2 ** 20,
  })
  const child = spawnRunner({ modelPath, threads: 1 })
  const messages: FromRunner[] = []
  const waiters: Array<() => void> = []
  let stderr = ''
  child.stderr.on('data', (d) => {
    stderr += d
  })
  child.stdout.on(
    'data',
    createLineSplitter(
      (line) => {
        messages.push(JSON.parse(line) as FromRunner)
        for (const w of waiters.splice(0)) w()
      },
      () => assert.fail('runner printed an endless line'),
    ),
  )
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
  const send = (msg: ToRunner) => child.stdin.write(`${JSON.stringify(msg)}\n`)
  const waitFor = async (type: FromRunner['type']) => {
    for (;;) {
      const found = messages.find((m) => m.type === type || m.type === 'error')
      if (found !== undefined) return found
      const code = await Promise.race([exited, new Promise<'more'>((r) => waiters.push(() => r('more')))])
      if (code !== 'more') assert.fail(`runner exited (${code}) before ${type}: ${stderr}`)
    }
  }
  try {
    send({ type: 'load', modelPath: SANDBOX_MODEL_PATH, contextSize: 512, parallel: 1, threads: 1 })
    const ready = await waitFor('ready')
    assert.equal(ready.type, 'ready', JSON.stringify(ready))
    send({
      type: 'generate',
      id: 'a',
      mode: 'chat',
      messages: [{ role: 'user', content: 'hi' }],
      options: {},
    })
    const done = await waitFor('done')
    assert.equal(done.type, 'done', JSON.stringify(done))
    const text = messages.flatMap((m) => (m.type === 'token' && m.id === 'a' ? [m.text] : [])).join('')
    assert.equal(text.trim(), TINY_ANSWER)
    send({ type: 'shutdown' })
    assert.equal(await exited, 0, stderr)
  } finally {
    child.kill('SIGKILL')
  }
})
