// `substrate peers`: the mesh as this node sees it — each peer's models, free job slots,
// measured speed, round trip and when it was last heard from — and this node's own mesh
// addresses, which another daemon can bootstrap to.

import type { PeersResponse } from '../api/types.ts'
import { type Command, shortDigest, table, timeAgo, writeJson } from './render.ts'

export function peersTable(body: PeersResponse, now = Date.now()): string {
  const rows = body.peers.map((p) => [
    p.id,
    p.models.length === 0
      ? '-'
      : p.models.map((m) => `${m.name || shortDigest(m.digest)}${m.loaded ? ' (loaded)' : ''}`).join(', '),
    String(p.freeSlots),
    p.tokensPerSecond > 0 ? p.tokensPerSecond.toFixed(1) : '-',
    p.latencyMs === null ? '-' : `${p.latencyMs} ms`,
    timeAgo(p.lastSeen, now),
  ])
  return table(['PEER', 'MODELS', 'FREE SLOTS', 'TOKENS/S', 'LATENCY', 'LAST SEEN'], rows)
}

const peers: Command = {
  usage: 'substrate peers',
  description:
    "Shows the peers in this node's mesh: the models each offers (and which are loaded), its free job\n" +
    'slots, the decode speed it measured serving jobs, the round trip to it, and when its last\n' +
    "capacity record arrived. The first line gives this node's own mesh addresses: start another\n" +
    'daemon with --bootstrap ADDR to join it.',
  examples: ['substrate peers', 'substrate peers --json'],
  flags: {},
  args: { min: 0, max: 0 },
  async run(ctx) {
    const body = await (await ctx.daemon()).peers()
    if (ctx.json) return writeJson(ctx.io.stdout, body)
    const out = ctx.io.stdout
    if (!body.enabled) {
      out.write('the mesh is off on this node (mesh.enabled = false)\n')
      return
    }
    out.write(`this node  ${body.id}\nlistening  ${body.addrs.join(', ') || '-'}\n\n`)
    if (body.peers.length === 0) {
      out.write('no peers yet: start another daemon with --bootstrap <one of the addresses above>\n')
      return
    }
    out.write(peersTable(body))
  },
}

export const commands: Record<string, Command> = { peers }
