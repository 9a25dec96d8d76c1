import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { Readable } from 'node:stream'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { formatTimings } from '../../src/cli/commands-run.ts'
import { commandHelp, commandIndex, main, resolveCommand, splitCommand } from '../../src/cli/main.ts'
import { createProgress, type Io, table } from '../../src/cli/render.ts'
import { VERSION } from '../../src/version.ts'

// Everything here runs without a daemon: these are the pieces that decide what a command
// line means, what help says, and which exit code a mistake gets.

function capture(stdin: Readable = Readable.from([])) {
  let out = ''
  let err = ''
  const io: Io = {
    stdout: { write: (s: string) => (out += s) },
    stderr: { write: (s: string) => (err += s) },
    stdin,
  }
  return { io, out: () => out, err: () => err }
}

async function exec(argv: string[], stdin?: Readable) {
  const c = capture(stdin)
  const code = await main(argv, c.io)
  return { code, out: c.out(), err: c.err() }
}

test('global flags may come before the command, and their values are not taken for it', () => {
  assert.deepEqual(splitCommand(['--port', '1234', '--json', 'list']), {
    command: 'list',
    rest: ['--port', '1234', '--json'],
  })
  assert.deepEqual(splitCommand(['--host=h', 'run', 'm', 'hi']), {
    command: 'run',
    rest: ['--host=h', 'm', 'hi'],
  })
  assert.deepEqual(splitCommand(['--version']), { command: undefined, rest: ['--version'] })
})

test('a command parses its own flags and the global ones, in any order', async () => {
  const r = await resolveCommand('pull', ['https://x/m.gguf', '--name', 'm', '--port', '9', '--json'])
  assert.equal(r.name, 'pull')
  assert.deepEqual(r.positionals, ['https://x/m.gguf'])
  assert.equal(r.values.name, 'm')
  assert.equal(r.values.port, '9')
  assert.equal(r.values.json, true)
})

test('ls is list', async () => {
  assert.equal((await resolveCommand('ls', [])).name, 'list')
})

test("every command's help teaches its usage, an example and the environment", async () => {
  for (const name of Object.keys(commandIndex)) {
    const { command } = await resolveCommand(name, ['--help'])
    const help = commandHelp(command)
    assert.match(help, new RegExp(`^Usage: substrate ${name}\\b`), name)
    assert.match(help, /Examples?:\n {2}.*substrate /, name)
    assert.match(help, /SUBSTRATE_HOME/, name)
    assert.match(help, /--json/, name)
    const { code, out } = await exec([name, '--help'])
    assert.equal(code, 0, name)
    assert.equal(out, help, name)
  }
})

test('help COMMAND and the general help both exit 0', async () => {
  const topic = await exec(['help', 'run'])
  assert.equal(topic.code, 0)
  assert.match(topic.out, /^Usage: substrate run MODEL \[PROMPT\.\.\.\]/)
  const general = await exec(['--help'])
  assert.equal(general.code, 0)
  for (const name of Object.keys(commandIndex)) assert.match(general.out, new RegExp(`\\n {2}${name} `))
})

test('--version and -v print the version and nothing else', async () => {
  for (const flag of ['--version', '-v']) {
    const r = await exec([flag])
    assert.equal(r.code, 0)
    assert.equal(r.out, `substrate version ${VERSION}\n`)
    assert.equal(r.err, '')
  }
})

test('an unknown flag is a usage error: exit 2, one line, and where to get help', async () => {
  const r = await exec(['list', '--frobnicate'])
  assert.equal(r.code, 2)
  assert.equal(r.err, "Error: unknown flag --frobnicate\nhint: see 'substrate help list'\n")
  assert.equal((await exec(['--frobnicate'])).code, 2)
})

test('an unknown command is a usage error with exit 2', async () => {
  const r = await exec(['frobnicate'])
  assert.equal(r.code, 2)
  assert.match(r.err, /^Error: unknown command 'frobnicate'\nhint: see 'substrate help'\n$/)
})

test('missing or extra arguments are usage errors that show the usage', async () => {
  const missing = await exec(['show'])
  assert.equal(missing.code, 2)
  assert.match(missing.err, /usage: substrate show MODEL/)
  const extra = await exec(['show', 'a', 'b'])
  assert.equal(extra.code, 2)
  assert.match(extra.err, /unexpected argument 'b'/)
  assert.equal((await exec(['import', 'f.gguf'])).code, 2, 'import without --name')
})

test('a flag that needs a value and has none is a usage error', async () => {
  const r = await exec(['pull', 'x', '--name'])
  assert.equal(r.code, 2)
  assert.match(r.err, /--name/)
})

test('run with no prompt and an empty stdin is a usage error, before any daemon is needed', async () => {
  const r = await exec(['run', 'm'], Readable.from([]))
  assert.equal(r.code, 2)
  assert.match(r.err, /no prompt/)
})

test('a stack trace appears only with --debug', async () => {
  assert.doesNotMatch((await exec(['frobnicate'])).err, /\n\s+at /)
  assert.match((await exec(['frobnicate', '--debug'])).err, /\n\s+at /)
})

test('--version loads no command module, no zod and no node-llama-cpp', () => {
  const mainPath = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
  // A resolve hook that reports every module the process loads.
  const hook = `import { registerHooks } from 'node:module'
registerHooks({ resolve(s, c, next) { const r = next(s, c); process.stderr.write('LOADED ' + r.url + '\\n'); return r } })`
  const result = spawnSync(
    process.execPath,
    ['--import', `data:text/javascript,${encodeURIComponent(hook)}`, mainPath, '--version'],
    { encoding: 'utf8' },
  )
  assert.equal(result.status, 0, result.stderr)
  const loaded = [...result.stderr.matchAll(/^LOADED (.*)$/gm)].map((m) => m[1]!)
  const ours = loaded.filter((u) => u.startsWith('file:')).map((u) => u.replace(/^.*\/src\//, 'src/'))
  assert.deepEqual(ours.sort(), ['src/cli/main.ts', 'src/errors.ts', 'src/version.ts'])
  assert.ok(!loaded.some((u) => /zod|node-llama-cpp/.test(u)), loaded.join('\n'))
})

test('without a terminal the progress display prints one line per 10%', () => {
  let out = ''
  const progress = createProgress({ write: (s: string) => (out += s), isTTY: false }, () => 0)
  for (let done = 0; done <= 1000; done += 7)
    progress.update({ status: 'pulling', total: 1000, completed: done })
  progress.update({ status: 'pulling', total: 1000, completed: 1000 })
  progress.update({ status: 'verifying sha256 digest' })
  progress.done()
  const lines = out.trimEnd().split('\n')
  assert.equal(lines.length, 12)
  assert.match(lines[0]!, /^pulling: 0% /)
  assert.match(lines[10]!, /^pulling: 100% \(1000 B\/1000 B\)$/)
  assert.equal(lines[11], 'verifying sha256 digest')
  assert.ok(!out.includes('\r') && !out.includes('\u001b'), 'no redrawing without a terminal')
})

test('tables are aligned and timings read like ollama --verbose', () => {
  assert.equal(table(['NAME', 'ID'], [['a:latest', '123']]), 'NAME        ID\na:latest    123\n')
  const t = formatTimings({
    total_duration: 2.5e9,
    eval_count: 50,
    eval_duration: 1e9,
    prompt_eval_count: 10,
  })
  assert.match(t, /^total duration: {7}2\.5s$/m)
  assert.match(t, /^eval rate: {12}50\.00 tokens\/s$/m)
  assert.match(t, /^prompt eval rate: {5}n\/a$/m)
})
