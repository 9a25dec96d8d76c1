// HTTP pull throughput against curl (issue 7): one local HTTP server (its own process,
// serving a file from the page cache with Range support), and in alternating rounds
// `curl -o FILE URL` and our resumable downloader (the code `substrate pull` runs: writes
// to the store's tmp/, sha256 while writing, fsync at the end) fetching the same bytes.
// Target: ours >= 80% of curl's throughput.
//
//   node bench/pull-http.ts [sizeMiB=1024] [rounds=3]

import { spawn } from 'node:child_process'
import { createHash, randomFillSync } from 'node:crypto'
import { once } from 'node:events'
import { closeSync, createReadStream, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { silentLogger } from '../src/logger.ts'
import { downloadFile } from '../src/models/pull.ts'
import { loadAverage, machineInfo, median, round } from './machine.ts'

if (process.argv[2] === '--serve') {
  // The server process: GET with optional "Range: bytes=N-", like a static file server.
  const file = process.argv[3]!
  const size = statSync(file).size
  const server = createServer((req, res) => {
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '')
    const start = m ? Number(m[1]) : 0
    const headers = { 'content-length': String(size - start), 'accept-ranges': 'bytes', etag: '"bench"' }
    if (start > 0) res.writeHead(206, { ...headers, 'content-range': `bytes ${start}-${size - 1}/${size}` })
    else res.writeHead(200, headers)
    createReadStream(file, { start, highWaterMark: 1 << 20 }).pipe(res)
  })
  server.listen(0, '127.0.0.1', () => {
    const address = server.address()
    process.stdout.write(`${typeof address === 'object' && address ? address.port : 0}\n`)
  })
} else {
  await main()
}

async function main() {
  const sizeMiB = Number(process.argv[2] ?? 1024)
  const rounds = Number(process.argv[3] ?? 3)
  const dir = mkdtempSync(join(tmpdir(), 'pull-http-'))
  const source = join(dir, 'model.bin')
  // Random bytes (16 MiB repeated): nothing on the path compresses, and the file is hashed once.
  const block = randomFillSync(Buffer.alloc(16 << 20))
  const fd = openSync(source, 'w')
  const hash = createHash('sha256')
  for (let written = 0; written < sizeMiB << 20; written += block.length) {
    const part = block.subarray(0, Math.min(block.length, (sizeMiB << 20) - written))
    writeSync(fd, part)
    hash.update(part)
  }
  closeSync(fd)
  const sha256 = hash.digest('hex')
  const bytes = sizeMiB * 2 ** 20

  const server = spawn(process.execPath, [import.meta.filename, '--serve', source], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const [line] = (await once(server.stdout!, 'data')) as [Buffer]
  const url = `http://127.0.0.1:${Number(line.toString().trim())}/model.bin`
  const loadBefore = loadAverage()

  // CPU seconds per GiB beside the rate: on a saturated machine each process gets CPU in
  // proportion to what it asks for, so the rate ratio tends to the inverse CPU ratio.
  const cpu = { curl: [] as number[], ours: [] as number[] }
  const curl = async () => {
    const out = join(dir, 'curl.out')
    const t0 = performance.now()
    // bash's `time` reports curl's own user and system CPU seconds on stderr.
    const child = spawn('bash', ['-c', `TIMEFORMAT='%U %S'; time curl -sS -o '${out}' '${url}'`], {
      stdio: ['ignore', 'inherit', 'pipe'],
    })
    let stderr = ''
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString()
    })
    const [code] = (await once(child, 'exit')) as [number]
    const seconds = (performance.now() - t0) / 1000
    if (code !== 0 || statSync(out).size !== bytes) throw new Error(`curl failed (${code}): ${stderr}`)
    const [user, sys] = stderr.trim().split(/\s+/).slice(-2).map(Number)
    cpu.curl.push(((user ?? Number.NaN) + (sys ?? Number.NaN)) / (bytes / 2 ** 30))
    rmSync(out)
    return bytes / seconds / 2 ** 20
  }
  const ours = async () => {
    const tmp = mkdtempSync(join(dir, 'ours-'))
    const c0 = process.cpuUsage()
    const t0 = performance.now()
    const file = await downloadFile(url, { tmpDir: tmp, logger: silentLogger }, { sha256 })
    const seconds = (performance.now() - t0) / 1000
    const used = process.cpuUsage(c0)
    cpu.ours.push((used.user + used.system) / 1e6 / (bytes / 2 ** 30))
    if (file.size !== bytes) throw new Error('short download')
    rmSync(tmp, { recursive: true })
    return bytes / seconds / 2 ** 20
  }
  // The floor of our CPU cost: sha256 alone over the same bytes, in this process.
  const h0 = process.cpuUsage()
  const alone = createHash('sha256')
  for (let done = 0; done < bytes; done += block.length) alone.update(block)
  alone.digest()
  const hashUsed = process.cpuUsage(h0)
  const sha256CpuSecondsPerGiB = (hashUsed.user + hashUsed.system) / 1e6 / (bytes / 2 ** 30)

  const results = { curl: [] as number[], ours: [] as number[] }
  try {
    await curl() // warm the server's page cache and the loopback path once, uncounted
    for (let i = 0; i < rounds; i++) {
      // Alternate which goes first, so a change of load hits both alike.
      if (i % 2 === 0) {
        results.curl.push(await curl())
        results.ours.push(await ours())
      } else {
        results.ours.push(await ours())
        results.curl.push(await curl())
      }
    }
  } finally {
    server.kill()
    rmSync(dir, { recursive: true, force: true })
  }
  const curlMiBs = median(results.curl)
  const oursMiBs = median(results.ours)
  console.log(
    JSON.stringify(
      {
        benchmark: 'pull-http',
        sizeMiB,
        rounds,
        curlMiBs: round(curlMiBs),
        oursMiBs: round(oursMiBs),
        ratio: round(oursMiBs / curlMiBs, 3),
        target: 0.8,
        runs: { curl: results.curl.map((v) => round(v)), ours: results.ours.map((v) => round(v)) },
        cpuSecondsPerGiB: {
          curl: round(median(cpu.curl), 2),
          ours: round(median(cpu.ours), 2),
          sha256Alone: round(sha256CpuSecondsPerGiB, 2),
        },
        machine: machineInfo(),
        loadAverage: { before: loadBefore, after: loadAverage() },
      },
      null,
      2,
    ),
  )
}
