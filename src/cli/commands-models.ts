// Commands that manage models through the daemon: pull, import, list, show, ps, stop, rm.
// The daemon owns the model store; these only ask it and print what it answers.

import { resolve } from 'node:path'
import { SubstrateError } from '../errors.ts'
import type { ProgressEvent } from '../models/types.ts'
import {
  type Command,
  type CommandContext,
  createProgress,
  formatBytes,
  shortDigest,
  table,
  timeAgo,
  timeUntil,
  writeJson,
} from './render.ts'

/** Progress on stderr, unless --json asked for a quiet, machine-readable run. */
function progressFor(ctx: CommandContext) {
  if (ctx.json) return { onProgress: undefined, done: () => {} }
  const bar = createProgress(ctx.io.stderr)
  return { onProgress: (e: ProgressEvent) => bar.update(e), done: () => bar.done() }
}

const pull: Command = {
  usage: 'substrate pull URL|hf:REPO/FILE|hf:REPO:QUANT|ollama:NAME[:TAG]|NAME [--name N] [--sha256 H]',
  description:
    'Downloads a GGUF model into the content-addressed store, resuming an interrupted download and\n' +
    'verifying its sha256. Sources: an http(s) URL; a Hugging Face file (hf:ORG/REPO/FILE.gguf) or\n' +
    'quantisation (hf:ORG/REPO:Q4_K_M picks the one GGUF file of that quantisation); the Ollama\n' +
    'library (ollama:NAME[:TAG], with its template and parameters). A built-in name such as\n' +
    'substrate-tiny is only made ready. --name sets the name it is stored under; --sha256 refuses\n' +
    'the file unless it matches. With --json, progress is printed as NDJSON lines on stdout.\n' +
    'From peers: --from-peers-only NAME|sha256:HEX (or the reference peers:NAME) fetches the model\n' +
    'only from mesh peers that hold it, chunk by chunk from several at once, each chunk verified;\n' +
    'any pull whose sha256 peers hold tries them first.',
  examples: [
    'substrate pull substrate-tiny',
    'substrate pull hf:bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M',
    'substrate pull ollama:llama3.2:1b',
    'substrate pull https://example.org/models/model-Q4_K_M.gguf --name mymodel',
    'substrate pull ollama:llama3.2:1b --json',
    'substrate pull --from-peers-only llama3.2:1b',
  ],
  flags: {
    name: { type: 'string', value: 'N', help: 'store the model under this name' },
    sha256: { type: 'string', value: 'H', help: 'the expected sha256 of the file, 64 hex digits' },
    'from-peers-only': { type: 'boolean', help: 'fetch only from mesh peers (NAME or sha256:HEX)' },
  },
  args: { min: 1, max: 1 },
  async run(ctx, { values, positionals }) {
    const given = positionals[0]!
    const source =
      values['from-peers-only'] === true && !given.startsWith('peers:') ? `peers:${given}` : given
    const client = await ctx.daemon()
    // --json: every progress event as one line, for scripts; the last one says "success".
    const progress = ctx.json
      ? {
          onProgress: (e: ProgressEvent) => void ctx.io.stdout.write(`${JSON.stringify(e)}\n`),
          done: () => {},
        }
      : progressFor(ctx)
    try {
      await client.pull(
        { model: source, as: values.name as string | undefined, sha256: values.sha256 as string | undefined },
        progress.onProgress,
      )
    } finally {
      progress.done()
    }
  },
}

const importCommand: Command = {
  usage: 'substrate import FILE --name N',
  description:
    'Copies a local GGUF file into the model store under the given name, checking that it is a\n' +
    'GGUF model the runtime can load. The file is read by the daemon, so it must be readable by\n' +
    'the user the daemon runs as.',
  examples: ['substrate import ./models/llama-3.2-1b-q4.gguf --name llama3.2:1b'],
  flags: { name: { type: 'string', value: 'N', help: 'the name to store the model under (required)' } },
  args: { min: 1, max: 1 },
  async run(ctx, { values, positionals }) {
    const name = values.name
    if (typeof name !== 'string' || name === '') {
      throw new SubstrateError('E_INVALID_ARGUMENT', 'import needs --name', {
        hint: "see 'substrate help import'",
      })
    }
    const client = await ctx.daemon()
    const progress = progressFor(ctx)
    // The daemon has its own working directory, so send an absolute path.
    const path = resolve(positionals[0]!)
    let model: Awaited<ReturnType<typeof client.importModel>>
    try {
      model = await client.importModel({ path, name }, progress.onProgress)
    } finally {
      progress.done()
    }
    if (ctx.json) return writeJson(ctx.io.stdout, model)
    ctx.io.stdout.write(`imported ${model.name} (${shortDigest(model.digest)}, ${formatBytes(model.size)})\n`)
  },
}

const list: Command = {
  usage: 'substrate list',
  description:
    'Lists the models in the store: name, id (the start of its sha256), size and when it was added.',
  examples: ['substrate list', 'substrate ls --json'],
  flags: {},
  args: { min: 0, max: 0 },
  async run(ctx) {
    const { models } = await (await ctx.daemon()).tags()
    if (ctx.json) return writeJson(ctx.io.stdout, models)
    const rows = models.map((m) => [
      m.name,
      shortDigest(m.digest),
      formatBytes(m.size),
      timeAgo(m.modified_at),
    ])
    ctx.io.stdout.write(table(['NAME', 'ID', 'SIZE', 'MODIFIED'], rows))
  },
}

const show: Command = {
  usage: 'substrate show MODEL',
  description:
    "Shows a model's details: architecture, parameter count, context length, quantisation and,\n" +
    'with --json, everything the daemon knows (model_info, template, modelfile).',
  examples: ['substrate show substrate-tiny', 'substrate show substrate-tiny --json'],
  flags: {},
  args: { min: 1, max: 1 },
  async run(ctx, { positionals }) {
    const m = await (await ctx.daemon()).show(positionals[0]!)
    if (ctx.json) return writeJson(ctx.io.stdout, m)
    const info = m.model_info
    const arch = String(info['general.architecture'] ?? m.details.family)
    const rows = [
      ['architecture', arch],
      ['parameters', m.details.parameter_size],
      ['context length', String(info[`${arch}.context_length`] ?? '')],
      ['quantization', m.details.quantization_level],
      ['format', m.details.format],
    ].filter(([, v]) => v !== '')
    ctx.io.stdout.write(`  Model\n${rows.map(([k, v]) => `    ${k!.padEnd(16)}${v}\n`).join('')}`)
    if (m.substrate?.source !== undefined) ctx.io.stdout.write(`\n  Source\n    ${m.substrate.source}\n`)
    if (m.parameters !== '') {
      const params = m.parameters.split('\n').map((l) => `    ${l}\n`)
      ctx.io.stdout.write(`\n  Parameters\n${params.join('')}`)
    }
    if (m.system !== undefined)
      ctx.io.stdout.write(`\n  System\n    ${m.system.split('\n').join('\n    ')}\n`)
    if (m.template !== '') {
      const lines = m.template.split('\n')
      const shown = lines.slice(0, 4).map((l) => `    ${l}\n`)
      const more = lines.length > 4 ? `    … ${lines.length - 4} more lines (see --json)\n` : ''
      ctx.io.stdout.write(`\n  Chat template\n${shown.join('')}${more}`)
    }
  },
}

const ps: Command = {
  usage: 'substrate ps',
  description:
    'Lists the models loaded in memory, each in its own runner process, with its context size, the\n' +
    'engine and threads it runs on (llama-server or node-llama-cpp; see `substrate engine`), and\n' +
    'when it will be unloaded if it stays idle (see --keep-alive on serve and run).',
  examples: ['substrate ps', 'substrate ps --json'],
  flags: {},
  args: { min: 0, max: 0 },
  async run(ctx) {
    const client = await ctx.client()
    const [{ models }, { runners }] = await Promise.all([client.ps(), client.runners()])
    if (ctx.json) return writeJson(ctx.io.stdout, models)
    const rows = models.map((m) => {
      const bare = (d: string) => d.replace(/^sha256:/, '')
      const runner = runners.find((r) => bare(r.digest) === bare(m.digest))
      return [
        m.name,
        shortDigest(m.digest),
        formatBytes(m.size),
        String(m.context_length),
        runner === undefined ? '' : `${runner.buildType} ×${runner.threads}`,
        timeUntil(m.expires_at),
      ]
    })
    ctx.io.stdout.write(table(['NAME', 'ID', 'SIZE', 'CONTEXT', 'ENGINE', 'UNTIL'], rows))
  },
}

const stop: Command = {
  usage: 'substrate stop MODEL',
  description: 'Unloads a model from memory now (its runner process exits); the model stays in the store.',
  examples: ['substrate stop substrate-tiny'],
  flags: {},
  args: { min: 1, max: 1 },
  async run(ctx, { positionals }) {
    const result = await (await ctx.client()).stopModel(positionals[0]!)
    if (ctx.json) return writeJson(ctx.io.stdout, { model: positionals[0], ...result })
    ctx.io.stdout.write(`stopped ${positionals[0]}\n`)
  },
}

const rm: Command = {
  usage: 'substrate rm MODEL [MODEL...]',
  description:
    'Removes models from the store (unloading them first). The file itself is deleted once no\nother name points at the same content.',
  examples: ['substrate rm mymodel', 'substrate rm a:latest b:q4'],
  flags: {},
  args: { min: 1 },
  async run(ctx, { positionals }) {
    const client = await ctx.daemon()
    for (const name of positionals) {
      await client.delete(name)
      if (!ctx.json) ctx.io.stdout.write(`deleted '${name}'\n`)
    }
    if (ctx.json) writeJson(ctx.io.stdout, { deleted: positionals })
  },
}

export const commands: Record<string, Command> = { pull, import: importCommand, list, show, ps, stop, rm }
