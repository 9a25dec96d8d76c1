// A mesh worker in its own process for bench/mesh-dispatch.ts and bench/mesh-discovery.ts:
// the daemon's mesh layer (createMesh: libp2p, capacity gossip, job protocol) over a runtime
// that answers at once, so what a benchmark measures is the mesh, not a model. It also serves
// `/bench/echo/1` (one frame back) as the floor of a stream round trip. Prints
// {"id", "addr"} as one JSON line; for each line "peers" on stdin prints
// {"peers": [ids in its capacity view], "gossip": counters}, for "conns" its open connections
// (peer, direction, address, age, streams); stops when stdin closes.
//
//   node bench/mesh-worker-process.ts [--bootstrap ADDR] [--publish-interval MS] [--keep-peers on|no-dedupe|off]

import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import { generateIdentity } from '../src/identity/keys.ts'
import { silentLogger } from '../src/logger.ts'
import { createMesh } from '../src/mesh/mesh.ts'
import type { ModelRecord } from '../src/models/types.ts'
import type { GenerateRequest, LoadedModel, RuntimeEvent } from '../src/runtime/runtime.ts'

export const BENCH_DIGEST = `sha256:${'be'.repeat(32)}`
export const ECHO_PROTOCOL = '/bench/echo/1'

export const benchModel: ModelRecord = {
  name: 'mesh-bench:latest',
  digest: BENCH_DIGEST,
  size: 1,
  path: '/nonexistent/mesh-bench.gguf',
  modifiedAt: new Date(0).toISOString(),
  details: {
    format: 'gguf',
    architecture: 'llama',
    family: 'llama',
    parameterCount: 1,
    parameterSize: '1',
    quantization: 'F32',
    contextLength: 512,
    chatTemplate: undefined,
  },
}

/** A runtime that answers every job with one token at once: the mesh's own cost is what is left. */
export const instantRuntime = {
  async *generate(_req: GenerateRequest): AsyncGenerator<RuntimeEvent> {
    yield { type: 'token', text: 'ok', tokens: 1 }
    const stats = { reason: 'stop' as const, promptTokens: 1, outputTokens: 1, promptEvalMs: 0, evalMs: 0 }
    yield { type: 'done', stats, loadMs: 0, totalMs: 0 }
  },
  ps: () => [{ digest: BENCH_DIGEST } as LoadedModel],
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      bootstrap: { type: 'string' },
      'publish-interval': { type: 'string' },
      'job-slots': { type: 'string', default: '8' },
      // The peer keeper (redials, one connection per peer), or parts of it off, to compare.
      'keep-peers': { type: 'string', default: 'on' },
    },
  })
  const identity = generateIdentity()
  const mesh = await createMesh(
    { identity, logger: silentLogger, models: { list: () => [benchModel] }, runtime: instantRuntime },
    {
      node: {
        ...(values.bootstrap === undefined ? {} : { bootstrap: [values.bootstrap] }),
        keepPeers:
          values['keep-peers'] === 'off'
            ? false
            : values['keep-peers'] === 'no-dedupe'
              ? { dedupe: false }
              : {},
      },
      jobs: { maxConcurrentJobs: Number(values['job-slots']) },
      ...(values['publish-interval'] === undefined
        ? {}
        : { capacity: { publishIntervalMs: Number(values['publish-interval']) } }),
    },
  )
  await mesh.node.libp2p.handle(ECHO_PROTOCOL, async (stream) => {
    for await (const chunk of stream) {
      stream.send(chunk)
      break
    }
    await stream.close()
  })
  await mesh.start()
  process.stdout.write(`${JSON.stringify({ id: identity.id, addr: mesh.node.multiaddrs()[0] })}\n`)
  createInterface({ input: process.stdin }).on('line', (line) => {
    if (line.trim() === 'conns') {
      const conns = mesh.node.libp2p.getConnections().map((c) => ({
        peer: c.remotePeer.toString(),
        direction: c.direction,
        addr: c.remoteAddr.toString(),
        status: c.status,
        ageMs: Date.now() - c.timeline.open,
        streams: c.streams.map((s) => `${s.direction === 'inbound' ? 'in' : 'out'} ${s.protocol ?? '?'}`),
      }))
      process.stdout.write(`${JSON.stringify({ conns })}\n`)
      return
    }
    if (line.trim() !== 'peers') return
    const peers = mesh.capacity.view().map((e) => ({ id: e.peer }))
    process.stdout.write(`${JSON.stringify({ peers, gossip: mesh.gossip() })}\n`)
  })
  process.stdin.on('end', () => {
    void mesh.stop().then(() => process.exit(0))
  })
}
