// Starts a real daemon (in this process, runners as real child processes) on a throwaway
// home and a free loopback port, and removes everything afterwards.

import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { main } from '../../src/cli/main.ts'
import type { Io } from '../../src/cli/render.ts'
import { type ConfigInput, parseConfig } from '../../src/config/schema.ts'
import { silentLogger } from '../../src/logger.ts'
import { createNode, type SubstrateNode } from '../../src/node.ts'

export interface TestNode {
  node: SubstrateNode
  url: string
  home: string
  close(): Promise<void>
}

export function tempHome(prefix = 'substrate-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix))
}

export async function startTestNode(overrides: Partial<ConfigInput> = {}): Promise<TestNode> {
  const home = tempHome()
  const config = parseConfig({
    home,
    ...overrides,
    api: { host: '127.0.0.1', port: 0, ...overrides.api },
    // Tests name their engine: which one `auto` picks depends on what this machine has built.
    runtime: {
      threads: 1,
      parallel: 4,
      contextSize: 2048,
      engine: 'node-llama-cpp',
      engineBuild: false,
      ...overrides.runtime,
    },
  })
  const node = await createNode(config, { logger: silentLogger })
  return {
    node,
    url: node.api.url,
    home,
    async close() {
      await node.stop()
      rmSync(home, { recursive: true, force: true })
    },
  }
}

/** Reads an NDJSON response body into objects. */
export async function readNdjson(res: Response): Promise<Array<Record<string, unknown>>> {
  const text = await res.text()
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>)
}

/** Runs the CLI in this process against the test node; returns its exit code and output. */
export async function runCli(node: TestNode, argv: string[]) {
  let out = ''
  let err = ''
  const io = {
    stdout: { write: (s: string) => (out += s) },
    stderr: { write: (s: string) => (err += s) },
    stdin: process.stdin,
  } as Io
  const port = new URL(node.url).port
  const code = await main([...argv, '--home', node.home, '--port', port], io)
  return { code, out, err }
}
