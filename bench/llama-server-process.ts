// llama.cpp's own llama-server, built by bench/build-llama-server.sh from the llama.cpp
// source node-llama-cpp ships: the baseline a daemon built on that code should approach.
// One streamed /completion is measured the way our daemon is: client-side chunk arrival
// times, plus the server's own `timings`.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { homedir, tmpdir } from 'node:os'
import { join } from 'node:path'
import { repoRoot } from './daemon-process.ts'
import type { StreamSample } from './generate-stream.ts'
import { freePort, sleep } from './machine.ts'

/** The bin directory holding llama-server, or undefined when it has not been built yet. */
export function llamaServerBinDir(): string | undefined {
  const info = JSON.parse(
    readFileSync(join(repoRoot, 'node_modules/node-llama-cpp/llama/llama.cpp.info.json'), 'utf8'),
  ) as { tag: string }
  const cache = process.env.SUBSTRATE_BENCH_CACHE ?? join(homedir(), '.cache/substrate')
  const dir = join(cache, `llama.cpp-${info.tag}`, 'build/bin')
  return existsSync(join(dir, 'llama-server')) ? dir : undefined
}

/** The llama.cpp version the server was built from, for the record (it prints to stderr). */
export function llamaServerVersion(binDir: string): string {
  const res = spawnSync(join(binDir, 'llama-server'), ['--version'], { encoding: 'utf8' })
  const text = `${res.stdout}\n${res.stderr}`
  return text.split('\n').find((l) => l.startsWith('version')) ?? 'unknown'
}

export interface LlamaServer {
  url: string
  pid: number
  completion(prompt: string, nPredict: number): Promise<StreamSample>
  stop(): Promise<void>
}

interface CompletionChunk {
  content?: string
  stop?: boolean
  tokens_predicted?: number
  timings?: {
    predicted_n: number
    predicted_ms: number
    predicted_per_second: number
    prompt_ms: number
    prompt_n: number
  }
  error?: { message: string }
}

/** Starts llama-server with the same threads and context layout as the daemon under test. */
export async function startLlamaServer(
  binDir: string,
  opts: { modelPath: string; threads: number; contextSize: number; parallel: number },
): Promise<LlamaServer> {
  const port = await freePort()
  const logDir = mkdtempSync(join(tmpdir(), 'llama-server-bench-'))
  const logFile = join(logDir, 'server.log')
  const args = [
    ...['-m', opts.modelPath, '--host', '127.0.0.1', '--port', String(port)],
    ...['-t', String(opts.threads), '-tb', String(opts.threads)],
    ...['-c', String(opts.contextSize * opts.parallel), '-np', String(opts.parallel)],
    ...['--no-webui', '--log-file', logFile],
  ]
  const child: ChildProcess = spawn(join(binDir, 'llama-server'), args, { stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const url = `http://127.0.0.1:${port}`
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    await Promise.race([exited, sleep(10_000)])
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    rmSync(logDir, { recursive: true, force: true })
  }
  const deadline = Date.now() + 60_000
  for (;;) {
    if (child.exitCode !== null)
      throw new Error(`llama-server exited (${child.exitCode}): ${readLog(logFile).slice(-2000)}`)
    try {
      const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) })
      if (res.ok) break
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop()
      throw new Error('llama-server did not become healthy within 60 s')
    }
    await sleep(50)
  }

  const completion = async (prompt: string, nPredict: number): Promise<StreamSample> => {
    const logBefore = readLog(logFile).length
    const started = performance.now()
    const res = await fetch(`${url}/completion`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        prompt,
        n_predict: nPredict,
        stream: true,
        ignore_eos: true,
        temperature: 0,
        cache_prompt: false,
      }),
    })
    if (!res.ok || !res.body) throw new Error(`llama-server /completion: ${res.status} ${await res.text()}`)
    let firstAt = 0
    let final: CompletionChunk | undefined
    let failure: string | undefined
    const decoder = new TextDecoder()
    let pending = ''
    const reader = res.body.getReader()
    for (let read = await reader.read(); !read.done; read = await reader.read()) {
      const bytes = read.value
      const now = performance.now()
      pending += decoder.decode(bytes, { stream: true })
      const lines = pending.split('\n')
      pending = lines.pop() ?? ''
      for (const line of lines) {
        if (!line.startsWith('data: ')) continue
        const chunk = JSON.parse(line.slice(6)) as CompletionChunk
        if (chunk.error) failure = chunk.error.message
        else if (chunk.stop) final = chunk
        else if (firstAt === 0) firstAt = now
      }
    }
    const doneAt = performance.now()
    if (firstAt === 0) firstAt = doneAt // a one-token answer arrives with the final chunk
    if (final?.timings) {
      const n = final.tokens_predicted ?? final.timings.predicted_n
      return {
        ttftMs: firstAt - started,
        decodeTps: ((n - 1) * 1000) / (doneAt - firstAt),
        tokens: n,
        reportedTps: final.timings.predicted_per_second,
        reportedPromptMs: final.timings.prompt_ms,
        promptTokens: final.timings.prompt_n,
      }
    }
    // A random-weight model can emit invalid UTF-8, which /completion answers with an error;
    // the server's log still has its own timing lines for the request.
    const log = readLog(logFile).slice(logBefore)
    const evalLine = /\s eval time =\s*([\d.]+) ms \/\s*(\d+) tokens/.exec(log)
    const promptLine = /prompt eval time =\s*([\d.]+) ms \/\s*(\d+) tokens/.exec(log)
    if (!evalLine) throw new Error(`llama-server gave no timings (${failure ?? 'no final chunk'})`)
    const n = Number(evalLine[2])
    return {
      ttftMs: firstAt - started,
      decodeTps: ((n - 1) * 1000) / (doneAt - firstAt),
      tokens: n,
      reportedTps: (n * 1000) / Number(evalLine[1]),
      reportedPromptMs: Number(promptLine?.[1] ?? Number.NaN),
      promptTokens: Number(promptLine?.[2] ?? Number.NaN),
    }
  }
  return { url, pid: child.pid ?? 0, completion, stop }
}

function readLog(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return ''
  }
}
