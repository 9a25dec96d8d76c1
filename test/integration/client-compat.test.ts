// The official `ollama` and `openai` npm clients, unmodified, against a real daemon serving
// the built-in model: what a user of either ecosystem would point at us first.

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { Ollama } from 'ollama'
import OpenAI from 'openai'
import { TINY_ANSWER } from '../../src/models/builtin.ts'
import { startTestNode, type TestNode } from '../helpers/node.ts'

describe('official clients', () => {
  let t: TestNode
  before(async () => {
    t = await startTestNode()
  })
  after(async () => t.close())

  test('ollama client streams a generate completion token by token', async () => {
    const ollama = new Ollama({ host: t.url })
    const parts: string[] = []
    let final: { done_reason?: string; eval_count?: number; total_duration?: number } = {}
    for await (const part of await ollama.generate({ model: 'substrate-tiny', prompt: 'hi', stream: true })) {
      if (part.done) final = part
      else parts.push(part.response ?? '')
    }
    assert.ok(parts.length > 5, `expected many chunks, got ${parts.length}`)
    assert.equal(parts.join('').trim(), TINY_ANSWER)
    assert.equal(final.done_reason, 'stop')
    assert.ok((final.eval_count ?? 0) >= parts.length - 1)
    assert.ok((final.total_duration ?? 0) > 0)
  })

  test('ollama client streams a chat answer', async () => {
    const ollama = new Ollama({ host: t.url })
    let text = ''
    for await (const part of await ollama.chat({
      model: 'substrate-tiny',
      messages: [{ role: 'user', content: 'hello?' }],
      stream: true,
    })) {
      text += part.message.content
    }
    assert.equal(text.trim(), TINY_ANSWER)
  })

  test('ollama client lists, shows and reports loaded models', async () => {
    const ollama = new Ollama({ host: t.url })
    const tags = await ollama.list()
    assert.ok(tags.models.some((m) => m.name === 'substrate-tiny:latest'))
    const show = await ollama.show({ model: 'substrate-tiny' })
    assert.equal(show.details.family, 'llama')
    assert.match(show.template, /im_start/)
    const ps = await ollama.ps()
    assert.ok(ps.models.some((m) => m.name === 'substrate-tiny:latest'))
  })

  test('openai client streams a chat completion over SSE with usage', async () => {
    const openai = new OpenAI({ baseURL: `${t.url}/v1`, apiKey: 'unused' })
    const stream = await openai.chat.completions.create({
      model: 'substrate-tiny',
      messages: [{ role: 'user', content: 'hello' }],
      stream: true,
      stream_options: { include_usage: true },
    })
    let text = ''
    let chunks = 0
    let finish: string | null = null
    let usage: { completion_tokens: number } | undefined
    for await (const chunk of stream) {
      chunks++
      text += chunk.choices[0]?.delta.content ?? ''
      finish = chunk.choices[0]?.finish_reason ?? finish
      if (chunk.usage) usage = chunk.usage
    }
    assert.ok(chunks > 5)
    assert.equal(text.trim(), TINY_ANSWER)
    assert.equal(finish, 'stop')
    assert.ok((usage?.completion_tokens ?? 0) > 5)
  })

  test('openai client gets a non-streamed chat completion and a text completion', async () => {
    const openai = new OpenAI({ baseURL: `${t.url}/v1`, apiKey: 'unused' })
    const chat = await openai.chat.completions.create({
      model: 'substrate-tiny',
      messages: [{ role: 'user', content: 'hello' }],
      max_tokens: 3,
    })
    assert.equal(chat.choices[0]?.finish_reason, 'length')
    assert.equal(chat.usage?.completion_tokens, 3)
    assert.equal(chat.choices[0]?.message.content?.trim(), 'Hello from the')

    const completion = await openai.completions.create({
      model: 'substrate-tiny',
      prompt: 'count ~',
      max_tokens: 4,
      seed: 7,
    })
    assert.equal(completion.choices[0]?.text.trim(), 'tick tock tick tock')
    assert.equal(completion.choices[0]?.finish_reason, 'length')
  })

  test('openai client streams a text completion', async () => {
    const openai = new OpenAI({ baseURL: `${t.url}/v1`, apiKey: 'unused' })
    const stream = await openai.completions.create({
      model: 'substrate-tiny',
      prompt: '~',
      max_tokens: 6,
      stream: true,
    })
    let text = ''
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? ''
    assert.equal(text.trim(), 'tick tock tick tock tick tock')
  })

  test('openai client lists models and reports an unknown model as a 404', async () => {
    const openai = new OpenAI({ baseURL: `${t.url}/v1`, apiKey: 'unused' })
    const models = await openai.models.list()
    assert.ok(models.data.some((m) => m.id === 'substrate-tiny:latest'))
    await assert.rejects(
      openai.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
      (err: unknown) => err instanceof OpenAI.NotFoundError,
    )
  })
})
