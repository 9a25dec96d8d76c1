// `substrate run`: one prompt streamed to stdout, or an interactive chat when no prompt is
// given on a terminal. Tokens are written as they arrive; timings follow on stderr.

import { createInterface } from 'node:readline'
import type { GenerationTimings } from '../api/client.ts'
import { SubstrateError, toSubstrateError } from '../errors.ts'
import { type Command, type CommandContext, formatNs, writeJson } from './render.ts'

type Client = Awaited<ReturnType<CommandContext['daemon']>>

interface RunOptions {
  model: string
  system: string | undefined
  keepAlive: string | undefined
  verbose: boolean
}

const rate = (count: number | undefined, ns: number | undefined) =>
  count !== undefined && ns ? `${((count * 1e9) / ns).toFixed(2)} tokens/s` : 'n/a'

/** The same lines `ollama run --verbose` prints, from a final (`done`) chunk. */
export function formatTimings(t: GenerationTimings): string {
  const rows: Array<[string, string]> = [
    ['total duration', formatNs(t.total_duration ?? 0)],
    ['load duration', formatNs(t.load_duration ?? 0)],
    ['prompt eval count', `${t.prompt_eval_count ?? 0} token(s)`],
    ['prompt eval duration', formatNs(t.prompt_eval_duration ?? 0)],
    ['prompt eval rate', rate(t.prompt_eval_count, t.prompt_eval_duration)],
    ['eval count', `${t.eval_count ?? 0} token(s)`],
    ['eval duration', formatNs(t.eval_duration ?? 0)],
    ['eval rate', rate(t.eval_count, t.eval_duration)],
  ]
  return rows.map(([k, v]) => `${`${k}:`.padEnd(22)}${v}\n`).join('')
}

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk)
  return Buffer.concat(chunks).toString('utf8')
}

async function runOnce(ctx: CommandContext, client: Client, o: RunOptions, prompt: string): Promise<void> {
  const { stdout, stderr } = ctx.io
  const controller = new AbortController()
  // Ctrl+C cancels the generation (the daemon stops its runner's work) rather than killing us mid-line.
  const onSigint = () => controller.abort()
  process.once('SIGINT', onSigint)
  let text = ''
  try {
    const final = await client.generate(
      { model: o.model, prompt, system: o.system, keep_alive: o.keepAlive, stream: true },
      {
        signal: controller.signal,
        onChunk: (chunk) => {
          text += chunk.response
          if (!ctx.json) stdout.write(chunk.response)
        },
      },
    )
    if (ctx.json) return writeJson(stdout, { ...final, response: text })
    if (text !== '' && !text.endsWith('\n')) stdout.write('\n')
    if (o.verbose || stderr.isTTY === true) stderr.write(formatTimings(final))
  } catch (err) {
    // Cancelled mid-answer: end the partial line so the error starts on its own.
    if (!ctx.json && text !== '' && !text.endsWith('\n')) stdout.write('\n')
    throw err
  } finally {
    process.off('SIGINT', onSigint)
  }
}

const replHelp = `Available commands:
  /clear    forget the conversation so far
  /bye      exit (or Ctrl+D)
  /?        this help
Ctrl+C stops a reply that is being written.
`

async function chat(ctx: CommandContext, client: Client, o: RunOptions): Promise<void> {
  const { stdout, stderr } = ctx.io
  // Load the model first, so a wrong name or too little memory is reported before the prompt.
  await client.chat({ model: o.model, messages: [], keep_alive: o.keepAlive })
  const start = o.system === undefined ? [] : [{ role: 'system' as const, content: o.system }]
  let messages: Array<{ role: 'system' | 'user' | 'assistant'; content: string }> = [...start]
  const rl = createInterface({ input: ctx.io.stdin, output: stdout as NodeJS.WritableStream, prompt: '>>> ' })
  let generating: AbortController | undefined
  rl.on('SIGINT', () => {
    if (generating) return generating.abort()
    stdout.write('\nUse Ctrl + d or /bye to exit.\n')
    rl.prompt()
  })
  stdout.write('Send a message (/? for help)\n')
  rl.prompt()
  let bye = false
  try {
    for await (const line of rl) {
      const input = line.trim()
      bye = input === '/bye' || input === '/exit'
      if (bye) break
      if (input === '/clear') {
        messages = [...start]
        stdout.write('Cleared the conversation.\n')
      } else if (input === '/?' || input === '/help') {
        stdout.write(replHelp)
      } else if (input.startsWith('/')) {
        stdout.write(`Unknown command '${input.split(/\s/)[0]}'. Type /? for help.\n`)
      } else if (input !== '') {
        messages.push({ role: 'user', content: input })
        generating = new AbortController()
        let reply = ''
        try {
          const final = await client.chat(
            { model: o.model, messages, keep_alive: o.keepAlive, stream: true },
            {
              signal: generating.signal,
              onChunk: (c) => {
                reply += c.message.content
                stdout.write(c.message.content)
              },
            },
          )
          messages.push({ role: 'assistant', content: reply })
          stdout.write(reply.endsWith('\n') ? '\n' : '\n\n')
          if (o.verbose) stderr.write(formatTimings(final))
        } catch (err) {
          const e = toSubstrateError(err)
          // The daemon is gone: nothing more can work, so leave with its error.
          if (e.code === 'E_DAEMON_UNREACHABLE') throw e
          messages.pop()
          stdout.write('\n')
          if (e.code !== 'E_CANCELLED')
            stderr.write(`Error: ${e.message}\n${e.hint ? `hint: ${e.hint}\n` : ''}`)
        } finally {
          generating = undefined
        }
      }
      rl.prompt()
    }
  } finally {
    rl.close()
  }
  // Ctrl+D leaves the cursor after the prompt; give the shell a fresh line.
  if (!bye) stdout.write('\n')
}

const run: Command = {
  usage: 'substrate run MODEL [PROMPT...]',
  description:
    'Runs a model. With a prompt, streams the answer to stdout and exits; without one on a terminal,\n' +
    'starts a chat (Ctrl+D or /bye to leave); without one and with stdin piped, reads the prompt\n' +
    'from stdin. Starts a daemon in the background if none is running. Timings go to stderr when it\n' +
    'is a terminal or with --verbose; --json prints the final result and stats as one object.',
  examples: [
    'substrate run substrate-tiny "Write a haiku about rivers"',
    'substrate run substrate-tiny',
    'cat notes.txt | substrate run substrate-tiny --system "Summarise this" --json',
  ],
  env: ['SUBSTRATE_KEEP_ALIVE  the default for --keep-alive (set on the daemon)'],
  flags: {
    verbose: { type: 'boolean', help: 'print timings (load, prompt eval, eval) after the answer' },
    system: { type: 'string', value: 'TEXT', help: 'a system prompt' },
    'keep-alive': {
      type: 'string',
      value: 'D',
      help: 'keep the model loaded this long after: 5m, 1h, 0, -1 = forever',
    },
  },
  args: { min: 1 },
  async run(ctx, { values, positionals }) {
    const options: RunOptions = {
      model: positionals[0]!,
      system: typeof values.system === 'string' ? values.system : undefined,
      keepAlive: typeof values['keep-alive'] === 'string' ? values['keep-alive'] : undefined,
      verbose: values.verbose === true,
    }
    let prompt = positionals.slice(1).join(' ')
    const interactive = prompt === '' && ctx.io.stdin.isTTY === true
    if (prompt === '' && !interactive) {
      prompt = (await readAll(ctx.io.stdin)).trimEnd()
      if (prompt.trim() === '') {
        throw new SubstrateError(
          'E_INVALID_ARGUMENT',
          'no prompt: give one after the model name or on stdin',
          {
            hint: "see 'substrate help run'",
          },
        )
      }
    }
    const client = await ctx.daemon()
    if (interactive) return chat(ctx, client, options)
    return runOnce(ctx, client, options, prompt)
  },
}

export const commands: Record<string, Command> = { run }
