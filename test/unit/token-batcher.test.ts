import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { createTokenBatcher } from '../../src/runtime/token-batcher.ts'
import { waitFor } from '../mesh/helpers.ts'

describe('token batcher', () => {
  test('tokens of one event-loop turn share a frame; a later token gets its own', async () => {
    const frames: string[] = []
    const b = createTokenBatcher(async (t) => void frames.push(t), {
      maxFrameChars: 100,
      maxPendingChars: 1000,
    })
    await b.push('a')
    await b.push('b')
    await b.push('c')
    await waitFor(() => frames.length === 1, 'the first frame')
    await b.push('d')
    await b.flush()
    assert.deepEqual(frames, ['abc', 'd'])
  })

  test('tokens produced while a frame is in flight go out together next, in order', async () => {
    const frames: string[] = []
    const b = createTokenBatcher(
      async (t) => {
        frames.push(t)
        await sleep(10)
      },
      { maxFrameChars: 100, maxPendingChars: 1000 },
    )
    await b.push('1')
    await waitFor(() => frames.length === 1, 'the first frame to be in flight')
    for (const t of ['2', '3', '4']) await b.push(t)
    await b.flush()
    assert.deepEqual(frames, ['1', '234'])
  })

  test('with a window, close followers share a frame and a first token is not held', async () => {
    const frames: Array<{ text: string; at: number }> = []
    const t0 = performance.now()
    const b = createTokenBatcher(async (text) => void frames.push({ text, at: performance.now() - t0 }), {
      maxFrameChars: 100,
      maxPendingChars: 1000,
      // Wide enough that a loaded CI machine cannot make the followers miss it.
      windowMs: 1_000,
    })
    await b.push('a')
    await waitFor(() => frames.length === 1, 'the first token')
    assert.ok(frames[0]!.at < 500, `the first token waited ${frames[0]!.at} ms`)
    for (const t of ['b', 'c', 'd']) {
      await b.push(t)
      await sleep(2)
    }
    await b.flush()
    assert.deepEqual(
      frames.map((f) => f.text),
      ['a', 'bcd'],
    )
  })

  test('frames respect the size limit and never split a surrogate pair', async () => {
    const frames: string[] = []
    const b = createTokenBatcher(async (t) => void frames.push(t), {
      maxFrameChars: 4,
      maxPendingChars: 1000,
    })
    const text = 'abc😀def😀'
    await b.push(text)
    await b.flush()
    assert.equal(frames.join(''), text)
    for (const f of frames) {
      assert.ok(f.length <= 4)
      assert.equal(f, Buffer.from(f, 'utf8').toString('utf8'), `frame ${JSON.stringify(f)} is valid UTF-16`)
    }
  })

  test('a send error reaches the producer', async () => {
    const b = createTokenBatcher(
      async () => {
        throw new Error('peer gone')
      },
      { maxFrameChars: 10, maxPendingChars: 1000 },
    )
    await b.push('x')
    await assert.rejects(b.flush(), /peer gone/)
    await assert.rejects(b.push('y'), /peer gone/)
  })

  test('push waits once too much is queued for a slow reader', async () => {
    let release!: () => void
    const gate = new Promise<void>((r) => {
      release = r
    })
    let started = 0
    const b = createTokenBatcher(
      () => {
        started++
        return gate
      },
      { maxFrameChars: 4, maxPendingChars: 8 },
    )
    await b.push('0123') // taken by the first frame, which blocks on the gate
    await waitFor(() => started > 0, 'the first frame to be in flight')
    await b.push('abcdefgh')
    let resolved = false
    const blocked = b.push('ijkl').then(() => {
      resolved = true
    })
    await sleep(10)
    assert.equal(resolved, false, 'push should wait while the reader is stalled')
    release()
    await blocked
    await b.flush()
  })
})
