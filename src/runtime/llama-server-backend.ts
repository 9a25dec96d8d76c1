// The runner's side of the `llama-server` engine (engine.ts): starts llama.cpp's own server as
// the runner's child — inside the runner's sandbox, on a unix socket in the sandbox's private
// /tmp, never a TCP port — and drives its /completion endpoint. The runner tokenizes; the
// server only ever sees token ids, so a prompt is fed exactly as node-llama-cpp would feed it.

import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync, readlinkSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { DoneReason, SamplingOptions } from './protocol.ts'

export interface LlamaServerInit {
  binary: string
  modelPath: string
  /** tokens per sequence */
  contextSize: number
  parallel: number
  threads: number
  /** end-of-generation tokens: streamed by the server, but not part of the answer's count */
  isEndToken(token: number): boolean
  loadTimeoutMs?: number
}

export interface CompletionResult {
  reason: DoneReason
  outputTokens: number
}

export interface LlamaServer {
  readonly pid: number
  /** per-slot context the server really set up */
  readonly contextSize: number
  /**
   * streams the continuation of `prompt` (token ids); `onText` gets each piece of text (maybe
   * empty: a token that ends mid-character) and how many output tokens came with it
   */
  complete(
    prompt: readonly number[],
    options: SamplingOptions & { extraStops?: string[] },
    signal: AbortSignal,
    onText: (text: string, tokens: number) => void,
  ): Promise<CompletionResult>
  /** resolves with a description of how the server ended */
  readonly exited: Promise<string>
  stop(): void
}

/**
 * A model reached through an inherited fd (the sandboxes pass it as `/proc/self/fd/N`, or a
 * symlink to that) must be inherited again by the server at the same fd number.
 */
function inheritedFd(modelPath: string): number | undefined {
  const match = (p: string) => /^\/proc\/self\/fd\/(\d+)$/.exec(p)?.[1]
  let fd = match(modelPath)
  if (fd === undefined) {
    try {
      fd = match(readlinkSync(modelPath))
    } catch {}
  }
  return fd === undefined ? undefined : Number(fd)
}

function httpJson(
  socketPath: string,
  method: string,
  path: string,
  timeoutMs: number,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, timeout: timeoutMs, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        body += c
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', reject)
    req.end()
  })
}

export async function startLlamaServer(init: LlamaServerInit): Promise<LlamaServer> {
  const socketPath = join(tmpdir(), `llama-server-${process.pid}.sock`)
  // The model and the binary itself may both be inherited fds (a sandbox's, or a root
  // daemon's runner account's): the server gets them at the same numbers.
  const stdio: Array<'ignore' | 'pipe' | number> = ['ignore', 'ignore', 'pipe']
  const modelFd = inheritedFd(init.modelPath)
  for (const fd of [modelFd, inheritedFd(init.binary)]) {
    if (fd === undefined) continue
    while (stdio.length <= fd) stdio.push('ignore')
    stdio[fd] = fd
  }
  const modelArg = modelFd === undefined ? init.modelPath : `/proc/self/fd/${modelFd}`
  const args = [
    ...['-m', modelArg, '--host', socketPath],
    ...['-c', String(init.contextSize * init.parallel), '-np', String(init.parallel)],
    ...['-t', String(init.threads), '-tb', String(init.threads)],
    // one slot per sequence, each its own contextSize (not one pool shared by all); no web UI;
    // no host-RAM prompt cache beyond the slots (it would grow past the sandbox's memory limit)
    ...['--no-kv-unified', '--no-webui', '--cache-ram', '0'],
  ]
  // The server must not outlive the runner, even one killed with SIGKILL: in a sandbox its pid
  // namespace ends with it; outside one, setpriv gives the server a parent-death signal.
  const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p))
  const argv =
    setpriv === undefined
      ? [init.binary, ...args]
      : [setpriv, '--pdeathsig', 'KILL', '--', init.binary, ...args]
  const child: ChildProcess = spawn(argv[0]!, argv.slice(1), { stdio })
  let stderrTail = ''
  // what a crash report quotes: warnings and errors, not the per-request info lines
  child.stderr?.on('data', (chunk: Buffer) => {
    const kept = chunk
      .toString('utf8')
      .split('\n')
      .filter((l) => l.trim() !== '' && !/^[\d.]+ I /.test(l))
    if (kept.length > 0) stderrTail = `${stderrTail}${kept.join('\n')}\n`.slice(-4000)
  })
  const exited = new Promise<string>((resolve) => {
    child.on('exit', (code, signal) => {
      const detail = stderrTail.trim().split('\n').slice(-3).join(' | ')
      resolve(`llama-server stopped (${signal ?? `exit code ${code}`})${detail ? `: ${detail}` : ''}`)
    })
    child.on('error', (err) => resolve(`cannot start llama-server: ${err.message}`))
  })

  // Loading: /health answers 503 until the model is in memory.
  const deadline = performance.now() + (init.loadTimeoutMs ?? 110_000)
  let gone: string | undefined
  void exited.then((why) => {
    gone = why
  })
  for (;;) {
    if (gone !== undefined) throw new Error(gone)
    if (performance.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error('llama-server did not become ready in time')
    }
    const health = await httpJson(socketPath, 'GET', '/health', 2000).catch(() => undefined)
    if (health?.status === 200) break
    await new Promise((r) => setTimeout(r, health === undefined ? 20 : 50))
  }
  const props = await httpJson(socketPath, 'GET', '/props', 5000)
  const slotContext = Number(JSON.parse(props.body)?.default_generation_settings?.n_ctx)

  return {
    pid: child.pid ?? -1,
    contextSize: Number.isInteger(slotContext) && slotContext > 0 ? slotContext : init.contextSize,
    exited,
    stop: () => child.kill('SIGKILL'),
    complete(prompt, options, signal, onText) {
      const body = JSON.stringify({
        prompt,
        stream: true,
        cache_prompt: true,
        n_predict: options.maxTokens ?? -1,
        temperature: options.temperature ?? 0.8,
        top_k: options.topK ?? 40,
        top_p: options.topP ?? 0.9,
        min_p: options.minP ?? 0,
        ...(options.seed !== undefined && { seed: options.seed >>> 0 }),
        repeat_penalty: options.repeatPenalty ?? 1,
        stop: [...(options.stop ?? []), ...(options.extraStops ?? [])],
      })
      // A stream cut short by the server dying is a crash (the runner ends with it), not a bug
      const failed = async (err: Error) => {
        const why = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(r, 500))])
        return why === undefined ? err : Object.assign(new Error(why), { code: 'E_RUNNER_CRASHED' })
      }
      return new Promise<CompletionResult>((resolve, reject) => {
        let outputTokens = 0
        let finished = false
        const req = request(
          {
            socketPath,
            // a fresh connection per request (a unix socket connects in microseconds): a pooled
            // keep-alive connection the server has just timed out would fail the request
            agent: false,
            method: 'POST',
            path: '/completion',
            headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
          },
          (res) => {
            if (res.statusCode !== 200) {
              let text = ''
              res.setEncoding('utf8')
              res.on('data', (c: string) => {
                text += c
              })
              res.on('end', () =>
                reject(new Error(`llama-server answered ${res.statusCode}: ${text.slice(0, 300)}`)),
              )
              return
            }
            let pending = ''
            res.setEncoding('utf8')
            res.on('data', (chunk: string) => {
              pending += chunk
              let end = pending.indexOf('\n\n')
              while (end !== -1) {
                const event = pending.slice(0, end)
                pending = pending.slice(end + 2)
                end = pending.indexOf('\n\n')
                if (!event.startsWith('data: ')) continue
                const data = JSON.parse(event.slice(6)) as {
                  content?: string
                  stop?: boolean
                  stop_type?: string
                  tokens?: number[]
                }
                // Counted as streamed: the server's tokens_predicted includes the end-of-sequence
                // token, which node-llama-cpp (and Ollama's eval_count) leave out.
                let tokens = 0
                for (const t of data.tokens ?? []) if (!init.isEndToken(t)) tokens++
                outputTokens += tokens
                if (data.content || tokens > 0) onText(data.content ?? '', tokens)
                if (!data.stop) continue
                finished = true
                resolve({ reason: data.stop_type === 'limit' ? 'length' : 'stop', outputTokens })
              }
            })
            res.on('end', () => {
              if (!finished) void failed(new Error('llama-server ended the stream early')).then(reject)
            })
            res.on('error', (err) => {
              if (!finished && !signal.aborted) void failed(err).then(reject)
            })
          },
        )
        const onAbort = () => {
          // Closing the connection is how llama-server learns to free the slot.
          req.destroy()
          if (!finished) {
            finished = true
            resolve({ reason: 'cancel', outputTokens })
          }
        }
        if (signal.aborted) onAbort()
        else signal.addEventListener('abort', onAbort, { once: true })
        req.on('error', (err) => {
          if (!finished) void failed(err).then(reject)
        })
        req.end(body)
      })
    },
  }
}
