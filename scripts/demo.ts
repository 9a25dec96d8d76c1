// The Quickstart's main job: start a real daemon (its own process) in a throwaway
// SUBSTRATE_HOME, stream an answer from the built-in model through the HTTP API, print the
// timings, and stop everything. `npm run demo` runs it.

import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { createClient } from '../src/api/client.ts'

const cli = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url))

async function freePort(): Promise<number> {
  const srv = createServer()
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  const port = (srv.address() as { port: number }).port
  await new Promise<void>((resolve) => srv.close(() => resolve()))
  return port
}

const home = mkdtempSync(join(tmpdir(), 'substrate-demo-'))
const port = await freePort()
const started = performance.now()
console.log(`• starting a daemon: SUBSTRATE_HOME=${home}, http://127.0.0.1:${port}`)
const daemon = spawn(process.execPath, [cli, 'serve', '--home', home, '--port', String(port)], {
  stdio: ['ignore', 'ignore', 'pipe'],
})
let daemonLog = ''
daemon.stderr.on('data', (d: Buffer) => {
  daemonLog += d.toString()
})
const exited = new Promise<number | null>((resolve) => daemon.on('exit', resolve))

const client = createClient({ baseUrl: `http://127.0.0.1:${port}` })
let status: Awaited<ReturnType<typeof client.status>> | undefined
for (let i = 0; i < 300 && !status; i++) {
  status = await client.status().catch(() => undefined)
  if (!status) await sleep(100)
  if (daemon.exitCode !== null) break
}
if (!status) {
  console.error(`the daemon did not start:\n${daemonLog}`)
  process.exit(1)
}
console.log(`• daemon ${status.id} up in ${Math.round(performance.now() - started)} ms (pid ${status.pid})`)

const prompt = 'What is the Substrate?'
console.log(`• substrate-tiny, prompt: ${JSON.stringify(prompt)}\n`)
process.stdout.write('  ')
const final = await client.generate(
  { model: 'substrate-tiny', prompt, stream: true, options: { temperature: 0.8, seed: 42 } },
  { onChunk: (c) => process.stdout.write(c.response) },
)
const ms = (ns: number | undefined) => (ns ?? 0) / 1e6
const rate = (count: number | undefined, ns: number | undefined) =>
  ns && count ? `${((count * 1e9) / ns).toFixed(0)} tokens/s` : 'n/a'
console.log('\n')
console.log(`  load            ${ms(final.load_duration).toFixed(1)} ms`)
console.log(
  `  prompt eval     ${final.prompt_eval_count} tokens, ${ms(final.prompt_eval_duration).toFixed(1)} ms`,
)
console.log(
  `  generation      ${final.eval_count} tokens, ${ms(final.eval_duration).toFixed(1)} ms (${rate(final.eval_count, final.eval_duration)})`,
)
console.log(`  total           ${ms(final.total_duration).toFixed(1)} ms, done: ${final.done_reason}`)

await client.shutdown()
const code = await Promise.race([exited, sleep(10_000).then(() => 'timeout' as const)])
if (code === 'timeout') daemon.kill('SIGKILL')
rmSync(home, { recursive: true, force: true })
console.log(`\n• daemon stopped (${code === 'timeout' ? 'killed after 10 s' : `exit ${code}`}); home removed`)
