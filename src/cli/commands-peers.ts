// `substrate peers`: the mesh as this node sees it — each peer's models, free job slots,
// measured speed, round trip and when it was last heard from — and this node's own mesh
// addresses, which another daemon can bootstrap to.

import type { PeersResponse, ReachabilityInfo } from '../api/types.ts'
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
    p.connection ?? '-',
    timeAgo(p.lastSeen, now),
  ])
  return table(['PEER', 'MODELS', 'FREE SLOTS', 'TOKENS/S', 'LATENCY', 'VIA', 'LAST SEEN'], rows)
}

const statusText = {
  public: 'public (AutoNAT confirmed an address)',
  relayed: 'through a relay',
  private: 'private (no address confirmed from outside)',
} as const

/** How others reach this node, as lines of "label  text" (shared with `substrate info`). */
export function reachabilityLines(r: ReachabilityInfo): Array<[string, string]> {
  const lines: Array<[string, string]> = [['reachable', statusText[r.status]]]
  const confirmed = r.addresses.filter((a) => a.verified && !a.relayed && a.type !== 'transport')
  if (confirmed.length > 0) lines.push(['confirmed', confirmed.map((a) => a.addr).join(', ')])
  if (r.relays.length > 0) lines.push(['relays', r.relays.join(', ')])
  if (r.relayServing !== null)
    lines.push([
      'relaying',
      `${r.relayServing.reservations} of ${r.relayServing.maxReservations} reservations held for others`,
    ])
  return lines
}

const peers: Command = {
  usage: 'substrate peers',
  description:
    "Shows the peers in this node's mesh: the models each offers (and which are loaded), its free job\n" +
    'slots, the decode speed it measured serving jobs, the round trip to it, whether we reach it\n' +
    'directly or through a relay, and when its last capacity record arrived. The first lines give\n' +
    "this node's own mesh addresses (start another daemon with --bootstrap ADDR to join it) and how\n" +
    'others reach it: AutoNAT-confirmed addresses, the relays it holds a reservation on, and the\n' +
    'reservations it holds for others when it serves as a relay.',
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
    out.write(`this node  ${body.id}\nlistening  ${body.addrs.join(', ') || '-'}\n`)
    if (body.reachability !== null)
      for (const [label, text] of reachabilityLines(body.reachability))
        out.write(`${label.padEnd(11)}${text}\n`)
    out.write('\n')
    if (body.peers.length === 0) {
      out.write('no peers yet: start another daemon with --bootstrap <one of the addresses above>\n')
      return
    }
    out.write(peersTable(body))
  },
}

export const commands: Record<string, Command> = { peers }
