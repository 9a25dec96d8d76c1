import { createRuntime } from './src/runtime/runtime.ts'
import { silentLogger } from './src/logger.ts'
import { writeTinyModelRecord } from './test/helpers/tiny-model.ts'
import { judgeTeacherForced } from './src/ledger/verify-receipt.ts'
const model = await writeTinyModelRecord('/tmp/tiny-s.gguf')
const rt = createRuntime({ logger: silentLogger }, { threads: 1, parallel: 1, contextSize: 512, keepAliveMs: 60000, maxLoadedModels: 2 })
for (const mode of ['completion', 'chat'] as const) {
  const req = mode === 'chat' ? { mode, messages: [{ role: 'user' as const, content: 'Hi there' }], options: { temperature: 0 } } : { mode, prompt: 'Hi there', options: { temperature: 0 } }
  let text = ''
  for await (const ev of rt.generate({ model, ...req })) if (ev.type === 'token') text += ev.text
  console.log(mode, JSON.stringify(text))
  for (const output of [text, text.split(' ').reverse().join(' '), 'xyz random stuff here and there okay']) {
    const t = performance.now()
    const r = await rt.score({ model, ...req, output, seed: 'bafyx', count: 16, topK: 8 })
    console.log(Math.round(performance.now() - t), 'ms', r.promptTokens, r.splits.map((s) => [s.tokens, judgeTeacherForced(s.evidence).honest, judgeTeacherForced(s.evidence).implausible]))
  }
}
await rt.stop()
