// A cheating mesh worker in its own process: a real libp2p node that gossips capacity for a
// model and speaks /substrate/job/1 by the book (admission, streamed frames, a signed
// receipt), but never runs that model. It answers with another, cheaper model's output
// (`bench`: substrate-bench, run for real) or with made-up words (`random`).
//
//   node cheating-worker-process.ts MODEL_FILE NAME random|bench BOOTSTRAP_ADDR
// Prints {"id", "addr"} as one JSON line once started; stops when stdin closes.

import { join } from 'node:path'
import { generateIdentity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import { createMesh } from '../../src/mesh/mesh.ts'
import { seededRandom, writeBenchModel } from '../../src/models/builtin.ts'
import { createRuntime, type GenerateRequest, type RuntimeEvent } from '../../src/runtime/runtime.ts'
import { modelRecordOf } from '../helpers/tiny-model.ts'

const [modelFile, name, mode, bootstrap] = process.argv.slice(2)
if (modelFile === undefined || name === undefined || (mode !== 'random' && mode !== 'bench')) {
  throw new Error('usage: cheating-worker-process.ts MODEL_FILE NAME random|bench [BOOTSTRAP_ADDR]')
}
const claimed = await modelRecordOf(modelFile, `${name}:latest`)
const runtime = createRuntime(
  { logger: silentLogger },
  { threads: 1, parallel: 1, contextSize: 512, keepAliveMs: 600_000, maxLoadedModels: 1 },
)
const benchFile = join(process.env.CHEAT_DIR ?? '/tmp', `cheat-bench-${process.pid}.gguf`)
if (mode === 'bench') await writeBenchModel(benchFile)
const cheaper = mode === 'bench' ? await modelRecordOf(benchFile, 'bench') : undefined
const random = seededRandom(process.pid)
const WORDS = ['Hello', 'commons', 'tick', 'floor', 'credits', 'zebra', 'seven', 'compute', 'tock', 'banana']

async function* cheat(req: GenerateRequest): AsyncGenerator<RuntimeEvent> {
  if (cheaper !== undefined) {
    yield* runtime.generate({ ...req, model: cheaper, options: { ...req.options, maxTokens: 24 } })
    return
  }
  for (let i = 0; i < 24; i++)
    yield {
      type: 'token',
      text: `${i === 0 ? '' : ' '}${WORDS[Math.floor(random() * WORDS.length)]}`,
      tokens: 1,
    }
  const stats = { reason: 'length' as const, promptTokens: 4, outputTokens: 24, promptEvalMs: 1, evalMs: 5 }
  yield { type: 'done', stats, loadMs: 0, totalMs: 6 }
}

const identity = generateIdentity()
const mesh = await createMesh(
  {
    identity,
    logger: silentLogger,
    models: { list: () => [claimed] },
    // It claims the model is loaded, so a requester prefers it.
    runtime: {
      generate: cheat,
      ps: () => [
        {
          name: claimed.name,
          digest: claimed.digest,
          size: claimed.size,
          contextSize: 512,
          pid: process.pid,
          active: 0,
          buildType: 'cheat',
          threads: 1,
          expiresAt: Number.POSITIVE_INFINITY,
        },
      ],
    },
  },
  { node: { listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: bootstrap === undefined ? [] : [bootstrap] } },
)
await mesh.start()
process.stdout.write(`${JSON.stringify({ id: identity.id, addr: mesh.node.multiaddrs()[0] })}\n`)
process.stdin.resume()
process.stdin.on('end', () => {
  void mesh
    .stop()
    .then(() => runtime.stop())
    .then(() => process.exit(0))
})
