// Runs INSIDE a sandbox (bound read-only by the escape tests) and tries one escape, printing
// one JSON line: what happened. It must never hang: every attempt has a deadline.
//   probe.ts read PATH | write PATH | tcp PORT | udp PORT | perl EXPR | forkbomb | membomb
//            | filltmp | plant | orphan | sleep

import { spawn } from 'node:child_process'
import { createSocket } from 'node:dgram'
import { readFileSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'

const [command = '', arg = ''] = process.argv.slice(2)
const report = (result: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(result)}\n`)
const codeOf = (err: unknown) => (err as NodeJS.ErrnoException).code ?? String(err)

function attempt(fn: () => unknown): Record<string, unknown> {
  try {
    fn()
    return { ok: true }
  } catch (err) {
    return { ok: false, code: codeOf(err) }
  }
}

switch (command) {
  case 'read':
    report(attempt(() => readFileSync(arg)))
    break
  case 'write':
    report(attempt(() => writeFileSync(arg, 'escaped')))
    break
  case 'tcp': {
    const socket = connect(Number(arg), '127.0.0.1')
    socket.on('connect', () => {
      report({ ok: true })
      socket.destroy()
    })
    socket.on('error', (err) => report({ ok: false, code: codeOf(err) }))
    break
  }
  case 'udp': {
    const socket = createSocket('udp4')
    socket.on('error', (err) => report({ ok: false, code: codeOf(err) }))
    socket.send('escaped', Number(arg), '127.0.0.1', (err) => {
      report(err ? { ok: false, code: codeOf(err) } : { ok: true })
      socket.close()
    })
    break
  }
  case 'perl': {
    // raw syscalls (Node has none): perl-base is Essential on Debian, bound by the test
    const script = `my $r = ${arg}; print $r == -1 ? 0 + $! : "ok"`
    const child = spawn('/usr/bin/perl', ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (d) => {
      out += d
    })
    child.on('error', (err) => report({ ok: false, code: codeOf(err) }))
    child.on('close', () => report(out === 'ok' ? { ok: true } : { ok: false, errno: Number(out) }))
    break
  }
  case 'forkbomb': {
    // cheap single-threaded children, so the pids limit is what stops the loop
    const children: ReturnType<typeof spawn>[] = []
    const deadline = Date.now() + 20_000
    const next = () => {
      if (children.length >= 2000 || Date.now() > deadline)
        return finish({ ok: true, spawned: children.length })
      const child = spawn('/usr/bin/perl', ['-e', 'sleep 60'], { stdio: 'ignore' })
      child.once('spawn', () => {
        children.push(child)
        next()
      })
      child.once('error', (err) => finish({ ok: false, code: codeOf(err), spawned: children.length }))
    }
    const finish = (result: Record<string, unknown>) => {
      report(result)
      for (const c of children) c.kill('SIGKILL')
      process.exit(0)
    }
    next()
    break
  }
  case 'membomb': {
    const hoard: Buffer[] = []
    // 2 GiB at most: if the limit is missing the test fails instead of paging the host
    for (let i = 0; i < 64; i++) hoard.push(Buffer.alloc(32 * 2 ** 20, 1))
    report({ ok: true, bytes: hoard.length * 32 * 2 ** 20 })
    break
  }
  case 'filltmp': {
    const chunk = Buffer.alloc(2 ** 20, 1)
    let written = 0
    const result = attempt(() => {
      for (; written < 1024; written++) writeFileSync('/tmp/fill', chunk, { flag: 'a' })
    })
    report({ ...result, mebibytes: written })
    break
  }
  case 'plant': // another job's secret, for a second sandbox to look for
    writeFileSync('/tmp/job-secret', 'secret')
    report({ ok: true, pid: process.pid })
    setInterval(() => {}, 1000)
    break
  case 'orphan': {
    // a grandchild in its own session, detached from the runner: it must not outlive the job
    const child = spawn('/usr/bin/perl', ['-e', 'sleep 60'], { detached: true, stdio: 'ignore' })
    child.unref()
    child.once('spawn', () => report({ ok: true, pid: process.pid, orphan: child.pid }))
    setInterval(() => {}, 1000)
    break
  }
  case 'sleep':
    report({ ok: true, pid: process.pid })
    setInterval(() => {}, 1000)
    break
  default:
    report({ ok: false, code: `unknown probe ${command}` })
}
