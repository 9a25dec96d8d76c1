// The Landlock helper on its own, on the host (no bwrap): landlock-exec must deny what its
// allow-list leaves out, with EACCES, for files, writes and TCP; and refuse bad usage.
// Fails (never skips) where the kernel has no Landlock: CI's kernel has ABI 7.

import assert from 'node:assert/strict'
import { execFile, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, it } from 'node:test'
import { buildLandlockHelper } from '../../src/sandbox/landlock.ts'

let helper: string
let dir: string
const SYSTEM = ['/usr', '/bin', '/lib', '/lib64', '/dev']

function under(ro: string[], rw: string[], ...cmd: string[]) {
  const r = spawnSync(helper, ['--ro', ...SYSTEM, ...ro, '--rw', ...rw, '--', ...cmd], { encoding: 'utf8' })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

before(() => {
  const built = buildLandlockHelper()
  assert.ok(built.ok, built.ok ? '' : built.reason)
  helper = built.path
  dir = mkdtempSync(join(tmpdir(), 'substrate-landlock-'))
  for (const sub of ['allowed', 'denied', 'scratch']) mkdirSync(join(dir, sub))
  writeFileSync(join(dir, 'allowed', 'file'), 'allowed')
  writeFileSync(join(dir, 'denied', 'file'), 'denied')
})
after(() => rmSync(dir, { recursive: true, force: true }))

it('reports the kernel ABI', () => {
  const r = spawnSync(helper, ['--abi'], { encoding: 'utf8' })
  assert.equal(r.status, 0)
  assert.ok(Number(r.stdout) >= 1, `this kernel must have Landlock: ABI ${r.stdout}`)
})

it('refuses to run without `--` and a command', () => {
  assert.equal(spawnSync(helper, ['--ro', '/usr']).status, 2)
  assert.equal(spawnSync(helper, ['--ro', '/usr', '--']).status, 2)
})

it('reads beneath --ro paths only, denying the rest with EACCES', () => {
  const scratch = join(dir, 'scratch')
  const ok = under([join(dir, 'allowed')], [scratch], 'cat', join(dir, 'allowed', 'file'))
  assert.deepEqual([ok.status, ok.stdout], [0, 'allowed'])
  const denied = under([join(dir, 'allowed')], [scratch], 'cat', join(dir, 'denied', 'file'))
  assert.equal(denied.status, 1)
  assert.match(denied.stderr, /Permission denied/)
})

it('writes beneath --rw paths only: not beneath --ro ones, not elsewhere', () => {
  const scratch = join(dir, 'scratch')
  const script = (target: string) => `echo x > ${target}`
  assert.equal(under([], [scratch], 'sh', '-c', script(join(scratch, 'ok'))).status, 0)
  const ro = under([join(dir, 'allowed')], [scratch], 'sh', '-c', script(join(dir, 'allowed', 'no')))
  assert.match(ro.stderr, /Permission denied/)
  const elsewhere = under([], [scratch], 'sh', '-c', script(join(dir, 'no')))
  assert.match(elsewhere.stderr, /Permission denied/)
})

it('denies TCP connect with no rules (ABI >= 4)', async () => {
  let connections = 0
  const server = createServer((s) => {
    connections++
    s.destroy()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  try {
    const address = server.address()
    assert.ok(address !== null && typeof address === 'object')
    const perl = `use IO::Socket::INET; IO::Socket::INET->new(PeerAddr => "127.0.0.1:${address.port}") ? print "connected" : print "$!"`
    // async: the server must be able to accept while the probe runs
    const r = await new Promise<{ stdout: string; stderr: string }>((resolve) => {
      execFile(helper, ['--ro', ...SYSTEM, '--', 'perl', '-e', perl], (_err, stdout, stderr) =>
        resolve({ stdout, stderr }),
      )
    })
    assert.equal(r.stdout, 'Permission denied', r.stderr)
    assert.equal(connections, 0)
  } finally {
    server.close()
  }
})
