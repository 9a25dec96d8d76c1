import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { continuation } from '../../src/mesh/continuation.ts'
import type { JobRequest } from '../../src/mesh/job-requester.ts'

const model = `sha256:${'c'.repeat(64)}`

describe('prefix continuation', () => {
  test('completion mode appends the received text to the prompt and shrinks both token caps', () => {
    const req: JobRequest = {
      model,
      mode: 'completion',
      prompt: '~',
      options: { maxTokens: 40 },
      maxTokens: 40,
    }
    assert.deepEqual(continuation(req, ' tick tock', 2), {
      model,
      mode: 'completion',
      prompt: '~ tick tock',
      options: { maxTokens: 38 },
      maxTokens: 38,
    })
  })

  test('chat mode continues the assistant turn: a trailing assistant message holds the prefix', () => {
    const req: JobRequest = {
      model,
      mode: 'chat',
      messages: [{ role: 'user', content: 'hi' }],
      options: {},
      maxTokens: 1000,
    }
    const next = continuation(req, 'Hello from', 2)
    assert.deepEqual(next?.messages, [
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: 'Hello from' },
    ])
    assert.equal(next?.maxTokens, 998)
    assert.deepEqual(next?.options, {}, 'no cap in the options stays no cap')
    // A second failover extends the same assistant message rather than adding another.
    assert.deepEqual(continuation(next!, ' the', 1)?.messages?.at(-1), {
      role: 'assistant',
      content: 'Hello from the',
    })
  })

  test('nothing is left to ask for once the received tokens reach the cap', () => {
    const req: JobRequest = {
      model,
      mode: 'completion',
      prompt: '~',
      options: { maxTokens: 5 },
      maxTokens: 10,
    }
    assert.equal(continuation(req, 'x', 5), undefined)
    assert.equal(continuation({ ...req, options: {} }, 'x', 10), undefined)
  })
})
