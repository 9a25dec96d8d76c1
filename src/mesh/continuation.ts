// Prefix continuation (DESIGN.md, "Run"): when a worker dies mid-stream, the next worker is
// asked to go on from the text already streamed, so the user sees one uninterrupted answer.
//
// Completion mode appends the received text to the prompt. Chat mode ends the conversation
// with an assistant message holding the received text: node-llama-cpp's LlamaChat continues
// a history whose last item is a model response instead of opening a new turn, so the chat
// template is applied exactly as the first worker applied it and the reply goes on in the
// same assistant turn. What is not identical: the received text is tokenized afresh, which
// can split a word differently from how it was generated, and sampling restarts (a seed does
// not reproduce the rest of the first worker's answer). Both are invisible at a word boundary.

import type { JobRequest } from './job-requester.ts'

/**
 * The request that continues `request` after `received` (holding `receivedTokens` tokens), or
 * undefined when the token budget is already spent (there is nothing left to ask for).
 */
export function continuation(
  request: JobRequest,
  received: string,
  receivedTokens: number,
): JobRequest | undefined {
  const maxTokens = request.maxTokens - receivedTokens
  if (maxTokens < 1) return undefined
  const options = { ...request.options }
  if (options.maxTokens !== undefined) {
    if (options.maxTokens - receivedTokens < 1) return undefined
    options.maxTokens -= receivedTokens
  }
  if (request.mode === 'completion') {
    return { ...request, options, maxTokens, prompt: `${request.prompt ?? ''}${received}` }
  }
  const messages = [...(request.messages ?? [])]
  const last = messages.at(-1)
  // A request that already prefilled the assistant's reply continues that same message.
  if (last?.role === 'assistant')
    messages[messages.length - 1] = { ...last, content: last.content + received }
  else messages.push({ role: 'assistant', content: received })
  return { ...request, options, maxTokens, messages }
}
