import assert from 'node:assert/strict'
import { test } from 'node:test'
import { peersTable, reachabilityLines } from '../../src/cli/commands-peers.ts'

test('substrate peers shows each peer with its models, free slots, speed, latency and last seen', () => {
  const now = Date.parse('2026-11-26T12:00:10Z')
  const text = peersTable(
    {
      enabled: true,
      id: '12D3KooWself',
      addrs: ['/ip4/127.0.0.1/tcp/4435/p2p/12D3KooWself'],
      reachability: null,
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
          connection: 'relayed',
        },
      ],
    },
    now,
  )
  const [header, row] = text.trimEnd().split('\n')
  assert.match(header!, /^PEER\s+MODELS\s+FREE SLOTS\s+TOKENS\/S\s+LATENCY\s+VIA\s+LAST SEEN$/)
  assert.match(
    row!,
    /^12D3KooWpeer\s+remote-tiny:latest \(loaded\), bbbbbbbbbbbb\s+2\s+812\.4\s+1 ms\s+relayed\s+3 seconds ago$/,
  )
})

test('substrate peers and info say how others reach this node', () => {
  const lines = reachabilityLines({
    status: 'relayed',
    addresses: [
      { addr: '/ip4/10.0.0.2/tcp/4435', type: 'transport', verified: true, relayed: false, public: false },
      {
        addr: '/ip4/11.0.0.1/tcp/4435/p2p/R/p2p-circuit',
        type: 'transport',
        verified: true,
        relayed: true,
        public: false,
      },
    ],
    relays: ['12D3KooWrelay'],
    relayServing: { reservations: 3, maxReservations: 32 },
  })
  assert.deepEqual(lines, [
    ['reachable', 'through a relay'],
    ['relays', '12D3KooWrelay'],
    ['relaying', '3 of 32 reservations held for others'],
  ])
})
