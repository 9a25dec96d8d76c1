import assert from 'node:assert/strict'
import { test } from 'node:test'
import { peersTable } from '../../src/cli/commands-peers.ts'

test('substrate peers shows each peer with its models, free slots, speed, latency and last seen', () => {
  const now = Date.parse('2026-11-26T12:00:10Z')
  const text = peersTable(
    {
      enabled: true,
      id: '12D3KooWself',
      addrs: ['/ip4/127.0.0.1/tcp/4435/p2p/12D3KooWself'],
      peers: [
        {
          id: '12D3KooWpeer',
          models: [
            { name: 'remote-tiny:latest', digest: `sha256:${'a'.repeat(64)}`, loaded: true },
            { name: '', digest: `sha256:${'b'.repeat(64)}`, loaded: false },
          ],
          freeSlots: 2,
          tokensPerSecond: 812.4,
          queueDepth: 0,
          latencyMs: 1,
          lastSeen: '2026-11-26T12:00:07Z',
        },
      ],
    },
    now,
  )
  const [header, row] = text.trimEnd().split('\n')
  assert.match(header!, /^PEER\s+MODELS\s+FREE SLOTS\s+TOKENS\/S\s+LATENCY\s+LAST SEEN$/)
  assert.match(
    row!,
    /^12D3KooWpeer\s+remote-tiny:latest \(loaded\), bbbbbbbbbbbb\s+2\s+812\.4\s+1 ms\s+3 seconds ago$/,
  )
})
