// HTTP pull throughput against curl (issue 7): one local HTTP server (its own process,
// serving a file from the page cache with Range support), and in alternating rounds
// `curl -o FILE URL` and our resumable downloader (the code `substrate pull` runs: writes
// to the store's tmp/ with direct I/O, sha256 while writing, fsync at the end) fetching
// the same bytes, both after one uncounted warm-up each. Target: ours >= 80% of curl's
// throughput. Beside the rates: CPU seconds per GiB of each, and two floors of ours measured
// in this run (sha256 alone; writing the bytes to this disk and fsyncing, with no network).
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
import { allocAligned, openWritableFile } from '../src/models/writable.ts'
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
    rmSync(out)
    return {
      rate: bytes / seconds / 2 ** 20,
      cpu: ((user ?? Number.NaN) + (sys ?? Number.NaN)) / (bytes / 2 ** 30),
    }
  }
  const ours = async () => {
    const tmp = mkdtempSync(join(dir, 'ours-'))
    const c0 = process.cpuUsage()
    const t0 = performance.now()
    const file = await downloadFile(url, { tmpDir: tmp, logger: silentLogger }, { sha256 })
    const seconds = (performance.now() - t0) / 1000
    const used = process.cpuUsage(c0)
    if (file.size !== bytes) throw new Error('short download')
    rmSync(tmp, { recursive: true })
    return { rate: bytes / seconds / 2 ** 20, cpu: (used.user + used.system) / 1e6 / (bytes / 2 ** 30) }
  }
  // The floor of our CPU cost: sha256 alone over the same bytes, in this process.
  const h0 = process.cpuUsage()
  const alone = createHash('sha256')
  for (let done = 0; done < bytes; done += block.length) alone.update(block)
  alone.digest()
  const hashUsed = process.cpuUsage(h0)
  const sha256CpuSecondsPerGiB = (hashUsed.user + hashUsed.system) / 1e6 / (bytes / 2 ** 30)
  // The disk's floor for ours: the same bytes written as the downloader writes them (4 MiB
  // page-aligned buffers, direct I/O) and fsynced, no network. curl's file stays in the page cache.
  const diskMiBs = await (async () => {
    const path = join(dir, 'disk.bin')
    const buffer = allocAligned(4 << 20)
    buffer.set(block.subarray(0, buffer.length))
    const t0 = performance.now()
    const out = await openWritableFile(path, 'w')
    for (let at = 0; at < bytes; at += buffer.length)
      await out.write(buffer.subarray(0, Math.min(buffer.length, bytes - at)), at)
    await out.sync()
    await out.close()
    const seconds = (performance.now() - t0) / 1000
    rmSync(path)
    return bytes / seconds / 2 ** 20
  })()

  const results = { curl: [] as number[], ours: [] as number[] }
  const cpu = { curl: [] as number[], ours: [] as number[] }
  const record = (side: 'curl' | 'ours', run: { rate: number; cpu: number }) => {
    results[side].push(run.rate)
    cpu[side].push(run.cpu)
  }
  try {
    // Warm the server's page cache, the loopback path and our code once each, uncounted.
    await curl()
    await ours()
    for (let i = 0; i < rounds; i++) {
      // Alternate which goes first, so a change of load hits both alike.
      if (i % 2 === 0) {
        record('curl', await curl())
        record('ours', await ours())
      } else {
        record('ours', await ours())
        record('curl', await curl())
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
        diskDirectWriteAndFsyncMiBs: round(diskMiBs),
        machine: machineInfo(),
        loadAverage: { before: loadBefore, after: loadAverage() },
      },
      null,
      2,
    ),
  )
}
