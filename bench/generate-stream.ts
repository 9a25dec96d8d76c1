// One streamed generation through our daemon's Ollama-compatible /api/generate, timed the
// way a client sees it: when the request left, when the first token's chunk arrived, when
// the final chunk arrived. Every contender in bench/ reports this same shape.

export interface StreamSample {
  /** request sent → first token's chunk arrived, ms */
  ttftMs: number
  /** tokens after the first, per second between the first chunk and the final one */
  decodeTps: number
  tokens: number
  /** the server's own decode rate (its timings / eval_duration) */
  reportedTps: number
  /** the server's own prompt time, ms */
  reportedPromptMs: number
  promptTokens: number
}

interface GenerateChunk {
  response?: string
  done?: boolean
  eval_count?: number
  eval_duration?: number
  prompt_eval_duration?: number
  prompt_eval_count?: number
  error?: string
}

/** Raw completion (no chat template), greedy, exactly `nPredict` tokens from substrate-bench. */
export async function streamGenerate(
  url: string,
  model: string,
  prompt: string,
  nPredict: number,
): Promise<StreamSample> {
  const started = performance.now()
  const res = await fetch(`${url}/api/generate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model,
      prompt,
      raw: true,
      stream: true,
      options: { temperature: 0, num_predict: nPredict },
    }),
  })
  if (!res.ok || !res.body) throw new Error(`/api/generate: ${res.status} ${await res.text()}`)
  let firstAt = 0
  let final: GenerateChunk | undefined
  const decoder = new TextDecoder()
  let pending = ''
  const reader = res.body.getReader()
  for (let read = await reader.read(); !read.done; read = await reader.read()) {
    const bytes = read.value
    const now = performance.now()
    pending += decoder.decode(bytes, { stream: true })
    const lines = pending.split('\n')
    pending = lines.pop() ?? ''
    for (const line of lines) {
      if (line.trim() === '') continue
      const chunk = JSON.parse(line) as GenerateChunk
      if (chunk.error) throw new Error(`/api/generate: ${chunk.error}`)
      if (chunk.done) final = chunk
      else if (firstAt === 0) firstAt = now
    }
  }
  const doneAt = performance.now()
  if (!final) throw new Error('/api/generate: the stream ended without a final chunk')
  // a one-token answer (or one whose only text is a partial UTF-8 byte) shows up with the final chunk
  if (firstAt === 0) firstAt = doneAt
  const n = final.eval_count ?? 0
  const evalMs = (final.eval_duration ?? 0) / 1e6
  return {
    ttftMs: firstAt - started,
    decodeTps: ((n - 1) * 1000) / (doneAt - firstAt),
    tokens: n,
    // the runner times from its first token to its last: n − 1 decode steps
    reportedTps: evalMs > 0 ? ((n - 1) * 1000) / evalMs : Number.NaN,
    reportedPromptMs: (final.prompt_eval_duration ?? 0) / 1e6,
    promptTokens: final.prompt_eval_count ?? 0,
  }
}
