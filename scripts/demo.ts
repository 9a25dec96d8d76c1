// The Quickstart's main job: a local mesh of three daemons — separate processes, each with
// its own throwaway SUBSTRATE_HOME, HTTP port and loopback mesh address, the second and third
// bootstrapped to the first. One node removes its copy of substrate-tiny and asks for it
// anyway: a peer serves the answer, and both signed receipts are printed. Then the worker
// serving a long answer is SIGKILLed mid-stream, and the answer completes from the other one
// (prefix continuation). In between, each node's credits: the worker earned, the requester
// (a newcomer with no credits) spent and its daily floor paid, and all three ledgers agree
// once they have synced. `npm run demo`.

import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { type Client, createClient } from '../src/api/client.ts'
import type { CreditsBalance, ReceiptInfo } from '../src/api/types.ts'
import { writeTinyModel } from '../src/models/builtin.ts'

const cli = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url))
const MODEL = 'substrate-tiny'

interface Daemon {
  name: string
  home: string
  child: ChildProcess
  client: Client
  id: string
  meshAddr: string
  exited: Promise<number | null>
  log(): string
}

const daemons: Daemon[] = []
const started = performance.now()
const elapsed = () => `${((performance.now() - started) / 1000).toFixed(1)} s`
const short = (id: string) => `…${id.slice(-8)}`

/** `substrate serve` on a fresh home, any free port, a loopback mesh address; waits for "ready". */
async function startDaemon(name: string, bootstrap?: string): Promise<Daemon> {
  const home = mkdtempSync(join(tmpdir(), `substrate-demo-${name}-`))
  const args = [cli, 'serve', '--home', home, '--port', '0', '--mesh-listen', '/ip4/127.0.0.1/tcp/0']
  if (bootstrap !== undefined) args.push('--bootstrap', bootstrap)
  const env: NodeJS.ProcessEnv = { ...process.env, SUBSTRATE_LOG_FORMAT: 'json' }
  for (const key of Object.keys(env))
    if (key.startsWith('SUBSTRATE_') && key !== 'SUBSTRATE_LOG_FORMAT') delete env[key]
  // The demo lives a minute: it uses llama-server if this machine has built it (engine auto),
  // and leaves starting that ~15-minute build to a daemon that stays (`substrate engine build`).
  env.SUBSTRATE_ENGINE_BUILD = 'false'
  const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'ignore', 'pipe'] })
  let log = ''
  child.stderr?.on('data', (d: Buffer) => {
    log += d.toString()
  })
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve))
  for (let i = 0; i < 300; i++) {
    const ready = log
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg?: string; url?: string })
      .find((e) => e.msg?.endsWith(' ready') === true && e.url !== undefined)
    if (ready?.url !== undefined) {
      const client = createClient({ baseUrl: ready.url })
      const status = await client.status()
      const meshAddr = status.mesh?.addrs[0]
      if (meshAddr === undefined) throw new Error(`daemon ${name} has no mesh address`)
      const daemon = { name, home, child, client, id: status.id, meshAddr, exited, log: () => log }
      daemons.push(daemon)
      console.log(`• ${name}: ${short(status.id)}  http ${ready.url}  mesh ${meshAddr.split('/p2p/')[0]}`)
      return daemon
    }
    if (child.exitCode !== null) break
    await sleep(100)
  }
  throw new Error(`daemon ${name} did not start:\n${log}`)
}

async function stopAll(): Promise<void> {
  await Promise.all(
    daemons.map(async (d) => {
      await d.client.shutdown().catch(() => {})
      // An unref'd timer: a pending one would keep the demo alive after the daemons are gone.
      const code = await Promise.race([d.exited, sleep(10_000, 'timeout' as const, { ref: false })])
      if (code === 'timeout') d.child.kill('SIGKILL')
      rmSync(d.home, { recursive: true, force: true })
    }),
  )
}

/** Runs the `substrate` CLI against a daemon, its output going to ours. */
async function substrate(d: Daemon, args: string[]): Promise<void> {
  const port = new URL(d.client.baseUrl).port
  const child = spawn(process.execPath, [cli, ...args, '--port', port, '--home', d.home], {
    stdio: ['ignore', 'inherit', 'inherit'],
  })
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  if (code !== 0) throw new Error(`substrate ${args.join(' ')} on ${d.name} exited with ${code}`)
}

const balanceKey = (b: CreditsBalance) =>
  JSON.stringify([b.member, b.earned, b.spent, b.floorCovered, b.balance, b.floorLeftToday, b.frozen])

/**
 * Credits after the mesh job: the worker earned, the requester spent and, being a newcomer
 * with nothing earned, had it paid by its daily floor. Then waits (bounded) until the three
 * ledgers hold the same balances: the receipt reached the third node only by ledger sync.
 */
async function credits(all: Daemon[], worker: Daemon, requester: Daemon): Promise<void> {
  console.log(`
• credits, as each node's own ledger folds them (one credit ≈ one output token):
`)
  const rows = await Promise.all(all.map(async (d) => ({ d, c: await d.client.credits() })))
  const cells = rows.map(({ d, c }) => [
    d.name,
    short(c.balance.member),
    String(c.balance.balance),
    String(c.balance.earned),
    String(c.balance.spent),
    String(c.balance.floorCovered),
    `${c.balance.floorLeftToday} of ${c.balance.floorPerDay}`,
  ])
  const head = ['NODE', 'MEMBER', 'BALANCE', 'EARNED', 'SPENT', 'FLOOR PAID', 'FLOOR LEFT TODAY']
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]!.length)) + 3)
  for (const r of [head, ...cells])
    console.log(
      `    ${r
        .map((v, i) => v.padEnd(widths[i]!))
        .join('')
        .trimEnd()}`,
    )
  const w = rows.find((r) => r.d === worker)!.c.balance
  const q = rows.find((r) => r.d === requester)!.c.balance
  if (!(w.earned > 0 && w.balance === w.earned))
    throw new Error(`${worker.name} earned nothing: ${JSON.stringify(w)}`)
  if (!(q.spent > 0 && q.floorCovered === q.spent && q.balance === 0)) {
    throw new Error(`${requester.name}'s spending was not paid by its floor: ${JSON.stringify(q)}`)
  }
  console.log(
    `
• ${worker.name} earned ${w.earned}; ${requester.name}, a newcomer with no credits, spent ${q.spent} and its daily floor paid it all`,
  )
  console.log(`
$ substrate credits   # on ${requester.name}
`)
  await substrate(requester, ['credits'])

  const waitStarted = performance.now()
  const deadline = waitStarted + 20_000
  let views: Array<{ d: Daemon; key: string; digest: string }> = []
  for (;;) {
    views = await Promise.all(
      all.map(async (d) => {
        const b = await d.client.ledgerBalances()
        return { d, key: b.balances.map(balanceKey).join('\n'), digest: b.headsDigest }
      }),
    )
    if (views.every((v) => v.key === views[0]!.key && v.digest === views[0]!.digest)) break
    if (performance.now() > deadline) {
      throw new Error(
        `the three ledgers did not agree within 20 s (is ledger sync running?): ${views
          .map((v) => `${v.d.name} ${v.digest.slice(0, 12)}`)
          .join(', ')}`,
      )
    }
    await sleep(200)
  }
  // `substrate credits MEMBER` on each node, for each member: one answer everywhere.
  const members = [worker, requester].map((d) => d.id)
  for (const member of members) {
    const answers = await Promise.all(all.map((d) => d.client.credits(member)))
    if (new Set(answers.map((a) => balanceKey(a.balance))).size !== 1) {
      throw new Error(`substrate credits ${member} differs between nodes`)
    }
  }
  console.log(
    `
• all three ledgers agree (heads digest ${views[0]!.digest.slice(0, 16)}…, ${Math.round(performance.now() - waitStarted)} ms after the check began): ` +
      `substrate credits gives ${worker.name} ${w.balance} and ${requester.name} ${q.balance} on every node`,
  )
}

/**
 * A long answer whose worker is SIGKILLed mid-stream. The model is a tiny variant that says
 * "tick tock" forever after "~" and can read that text back as the same tokens, which a
 * continuation needs (the built-in one cannot: its vocabulary has no merge pieces).
 */
async function failover(requester: Daemon, workers: Daemon[]): Promise<void> {
  const name = 'tiny-loop'
  console.log(
    `\n• part two: ${workers.map((w) => w.name).join(' and ')} import ${name}; one is killed mid-answer`,
  )
  await Promise.all(
    workers.map(async (w) => {
      const file = join(w.home, `${name}.gguf`)
      await writeTinyModel(file, { contextLength: 2048, readableLoop: true })
      await w.client.importModel({ path: file, name })
      await w.client.generate({ model: name, prompt: '', keep_alive: '5m' }) // load it: ready to take over
    }),
  )
  for (let i = 0; ; i++) {
    const { peers } = await requester.client.peers()
    const loaded = peers.filter((p) => p.models.some((m) => m.name === `${name}:latest` && m.loaded))
    if (loaded.length >= workers.length) break
    if (i > 200) throw new Error(`${requester.name} did not see ${name} loaded on both workers`)
    await sleep(100)
  }
  const total = 1500
  console.log(
    `\n$ curl …/api/generate -d '{"model":"${name}","prompt":"~","raw":true,"options":{"num_predict":${total}}}'\n`,
  )
  let text = ''
  let victim: Daemon | undefined
  let asked = false
  let killedAt = 0
  let lastAt = 0
  let longestGap = 0
  const final = await requester.client.generate(
    { model: name, prompt: '~', raw: true, stream: true, options: { num_predict: total } },
    {
      onChunk: (c) => {
        if (c.done) return
        const now = performance.now()
        if (killedAt > 0) longestGap = Math.max(longestGap, now - Math.max(lastAt, killedAt))
        lastAt = now
        text += c.response
        const words = text.trim().split(' ').length
        if (!asked && words >= 200) {
          asked = true
          // The worker with a busy runner is the one serving this job.
          void Promise.all(workers.map((w) => w.client.runners().catch(() => ({ runners: [] })))).then(
            (all) => {
              victim = workers[all.findIndex((r) => r.runners.some((x) => x.active > 0))]
              if (victim === undefined) return
              victim.child.kill('SIGKILL')
              killedAt = performance.now()
              console.log(
                `  …${text.trimEnd().slice(-30)}   ✂ ${victim.name} SIGKILLed after ${text.trim().split(' ').length} words`,
              )
            },
          )
        }
      },
    },
  )
  const words = text.trim().split(' ')
  const seamless = words.every((w, i) => w === (i % 2 === 0 ? 'tick' : 'tock'))
  const served = final.substrate
  const by = workers.find((w) => w.id === served?.worker)?.name ?? served?.worker
  console.log(`  ${text.trimEnd().slice(-30)}   (the end)\n`)
  console.log(
    `• ${words.length} of ${total} words, every one in order: ${seamless}; eval_count ${final.eval_count}`,
  )
  console.log(
    `• ${by} continued after ${served?.resumedAfterTokens ?? 0} tokens; the longest silence after the kill was ${Math.round(longestGap)} ms`,
  )
}

try {
  console.log('Starting a local mesh of three daemons (separate processes, loopback only):\n')
  const alpha = await startDaemon('alpha')
  const [beta, gamma] = await Promise.all([
    startDaemon('beta', alpha.meshAddr),
    startDaemon('gamma', alpha.meshAddr),
  ])
  const workers = [alpha, beta]

  // gamma gives up its own copy, so the only way it can answer is through a peer.
  await gamma.client.delete(MODEL)
  console.log(`\n• gamma removed its ${MODEL}; waiting until it sees the peers that hold it…`)
  for (let i = 0; ; i++) {
    const { peers } = await gamma.client.peers()
    const holders = peers.filter((p) => p.models.some((m) => m.name === `${MODEL}:latest`))
    if (holders.length >= 2) break
    if (i > 200) throw new Error('gamma did not see its peers within 20 s')
    await sleep(100)
  }
  console.log(`  (after ${elapsed()})\n\n$ substrate peers   # on gamma`)
  const peersOut = spawn(
    process.execPath,
    [cli, 'peers', '--port', new URL(gamma.client.baseUrl).port, '--home', gamma.home],
    {
      stdio: ['ignore', 'inherit', 'inherit'],
    },
  )
  await new Promise((resolve) => peersOut.on('exit', resolve))

  const prompt = 'What is the Substrate?'
  console.log(`\n$ substrate run ${MODEL} ${JSON.stringify(prompt)}   # on gamma, which lacks the model\n`)
  process.stdout.write('  ')
  const final = await gamma.client.generate(
    { model: MODEL, prompt, stream: true },
    { onChunk: (c) => process.stdout.write(c.response) },
  )
  console.log('\n')
  const served = final.substrate
  if (served === undefined) throw new Error('the answer did not come from the mesh')
  const worker = workers.find((w) => w.id === served.worker)
  console.log(`• served by ${worker?.name ?? 'an unknown peer'} (${served.worker})`)
  const ms = (ns: number | undefined) => ((ns ?? 0) / 1e6).toFixed(0)
  console.log(
    `  ${final.eval_count} tokens in ${ms(final.eval_duration)} ms, ${ms(final.total_duration)} ms end to end (the worker loaded the model first)`,
  )

  const show = (title: string, r: ReceiptInfo) => {
    console.log(`\n• ${title}`)
    const rows: Array<[string, string | number]> = [
      ['receipt CID', r.cid],
      ['job CID', r.job],
      ['model', r.model],
      ['signed by', `${r.worker} (worker)`],
      ['countersigned', `${r.requester} (requester)`],
      ['prompt tokens', r.promptTokens],
      ['output tokens', r.outputTokens],
      ['compute', `${r.computeMs} ms`],
      ['output hash', r.outputHash],
    ]
    for (const [key, value] of rows) console.log(`    ${key.padEnd(15)}${value}`)
  }
  const requesterCopy = (await gamma.client.receipts()).receipts.find((r) => r.cid === served.receipt.cid)
  show(
    'receipt kept by gamma (requester): worker-signed, countersigned by gamma',
    requesterCopy ?? served.receipt,
  )
  const workerCopy = (await worker!.client.receipts()).receipts.find((r) => r.cid === served.receipt.cid)
  if (workerCopy === undefined) throw new Error(`${worker?.name} did not keep the receipt`)
  show(`receipt kept by ${worker!.name} (worker): the same doubly signed record`, workerCopy)
  const same = requesterCopy?.signed !== undefined && requesterCopy.signed === workerCopy.signed
  console.log(`\n• both copies are the same signed bytes: ${same}`)
  if (!same) throw new Error('the requester and the worker logged different receipts')
  await credits([alpha, beta, gamma], worker!, gamma)
  await failover(gamma, workers)
  console.log(`\n• done in ${elapsed()}; stopping the three daemons`)
} catch (err) {
  console.error(`\ndemo failed: ${err instanceof Error ? err.message : String(err)}`)
  for (const d of daemons)
    console.error(`--- ${d.name} log (tail)\n${d.log().split('\n').slice(-8).join('\n')}`)
  process.exitCode = 1
} finally {
  await stopAll()
}
