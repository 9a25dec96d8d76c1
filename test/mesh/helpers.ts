// Real libp2p nodes in this test process, on 127.0.0.1, plus small fakes of the runtime.

import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { SubstrateError } from '../../src/errors.ts'
import { generateIdentity, type Identity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import type { RunJob } from '../../src/mesh/job-worker.ts'
import { createMeshNode, type MeshNode } from '../../src/mesh/libp2p-node.ts'
import type { RuntimeEvent } from '../../src/runtime/runtime.ts'

export interface TestPeer {
  identity: Identity
  mesh: MeshNode
}

/**
 * Starts `count` nodes. `line` connects each to the next (A–B–C, so gossip must be relayed);
 * `star` connects every node to the first.
 */
export async function startPeers(count: number, shape: 'line' | 'star' = 'star'): Promise<TestPeer[]> {
  const peers: TestPeer[] = []
  for (let i = 0; i < count; i++) {
    const identity = generateIdentity()
    const mesh = await createMeshNode({ identity, logger: silentLogger })
    await mesh.start()
    peers.push({ identity, mesh })
  }
  for (let i = 1; i < count; i++) {
    const target = shape === 'line' ? peers[i - 1]! : peers[0]!
    await peers[i]!.mesh.dial(target.mesh.multiaddrs()[0]!, 5_000)
  }
  return peers
}

export async function stopPeers(peers: TestPeer[]): Promise<void> {
  await Promise.all(peers.map((p) => p.mesh.stop()))
}

/** Polls until `check` holds; fails the test with `what` after `timeoutMs`. */
export async function waitFor(check: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(20)
  }
}

export function rejectsWith(code: string) {
  return (err: unknown) => {
    assert.ok(err instanceof SubstrateError, `expected a SubstrateError, got ${String(err)}`)
    assert.equal(err.code, code, err.message)
    return true
  }
}

export const MODEL_DIGEST = `sha256:${'ab'.repeat(32)}`
export const OTHER_DIGEST = `sha256:${'cd'.repeat(32)}`

export interface FakeJobProbe {
  started: number
  /** Times a job's generator ran its `finally`: it was stopped or finished. */
  stopped: number
  lastSignal?: AbortSignal
}

/**
 * A stand-in for Runtime.generate(): yields `tokens` one every `delayMs`, then a done
 * event; with `forever`, keeps yielding until aborted; with `stall`, never yields at all.
 */
export function fakeRunJob(
  probe: FakeJobProbe,
  opts: { tokens?: string[]; delayMs?: number; forever?: boolean; stall?: boolean } = {},
): RunJob {
  const tokens = opts.tokens ?? ['Hello', ', ', 'mesh', '!']
  const delayMs = opts.delayMs ?? 1
  return async function* (_job, signal): AsyncGenerator<RuntimeEvent> {
    probe.started++
    probe.lastSignal = signal
    try {
      if (opts.stall === true) await sleep(60_000, undefined, { signal })
      let count = 0
      for (let i = 0; opts.forever === true || i < tokens.length; i++) {
        await sleep(delayMs, undefined, { signal })
        count++
        yield { type: 'token', text: tokens[i % tokens.length]!, tokens: 1 }
      }
      yield {
        type: 'done',
        stats: { reason: 'stop', promptTokens: 3, outputTokens: count, promptEvalMs: 1, evalMs: 1 },
        loadMs: 0,
        totalMs: 1,
      }
    } finally {
      probe.stopped++
    }
  }
}
