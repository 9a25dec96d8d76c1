// Native routes about the mesh: the peers this node sees (what `substrate peers` shows) and
// the receipts of recent mesh jobs, and the JSON form of "who served this" that the Ollama
// and OpenAI routes add to a final chunk as the extension field `substrate` (their official
// clients ignore fields they do not know).

import type { CapacityEntry, CapacityGossipStats } from '../mesh/capacity-gossip.ts'
import type { CountersignedReceipt } from '../mesh/job-protocol.ts'
import type { TrafficSnapshot } from '../mesh/traffic-meter.ts'
import type { PeerStanding } from '../mesh/worker-standing.ts'
import { sendJson } from './http.ts'
import type { MeshServed } from './inference.ts'
import type { Route } from './router.ts'
import type { PeerInfo, PeersResponse, ReachabilityInfo, ReceiptInfo, ServedInfo } from './types.ts'

export interface MeshRouteComponents {
  /** Absent when the mesh is off. */
  mesh?:
    | {
        peerId: string
        multiaddrs(): string[]
        view(): CapacityEntry[]
        /** Round-trip time to a connected peer in ms, when measured. */
        latencyMs(peer: string): number | undefined
        standing?(peer: string): PeerStanding
        /** Gossip counters, peer scores and (from the mesh) `traffic`: bytes by protocol and gossip part. */
        gossip?(): CapacityGossipStats & {
          scores: Array<{ id: string; score: number }>
          traffic?: TrafficSnapshot
        }
        /** AutoNAT's verdicts and relay reservations. */
        reachability?(): ReachabilityInfo
        connectionKind?(peer: string): 'direct' | 'relayed' | undefined
      }
    | undefined
  /** The most recent receipts this node signed, as worker or as requester (newest last). */
  recentReceipts?: () => Array<{ role: 'worker' | 'requester'; receipt: CountersignedReceipt }>
}

/** A receipt as JSON: its fields and both signers; `signed` adds the envelope (base64) to re-verify. */
export function receiptJson(r: CountersignedReceipt, options: { signed?: boolean } = {}): ReceiptInfo {
  return {
    cid: r.cid,
    job: r.receipt.job,
    model: r.receipt.model,
    worker: r.worker,
    requester: r.requester,
    promptTokens: r.receipt.promptTokens,
    outputTokens: r.receipt.outputTokens,
    computeMs: r.receipt.computeMs,
    outputHash: r.receipt.outputHash,
    ...(options.signed === true ? { signed: Buffer.from(r.bytes).toString('base64') } : {}),
  }
}

export function servedJson(served: MeshServed): ServedInfo {
  return {
    worker: served.worker,
    job: served.job,
    ...(served.resumedAfterTokens === undefined ? {} : { resumedAfterTokens: served.resumedAfterTokens }),
    receipt: receiptJson(served.receipt),
  }
}

function standingJson(s: PeerStanding | undefined): Pick<PeerInfo, 'standing'> {
  if (s === undefined || s.successes + s.failures + s.inFlight === 0) return {}
  const { inFlight, successes, failures, lastOutcome } = s
  const standing = { inFlight, penalty: Math.round(s.penalty * 100) / 100, successes, failures }
  return { standing: lastOutcome === undefined ? standing : { ...standing, lastOutcome } }
}

export function meshRoutes(c: MeshRouteComponents): Route[] {
  return [
    {
      method: 'GET',
      path: '/substrate/v1/peers',
      handler: async (_req, res) => {
        const mesh = c.mesh
        const peers: PeerInfo[] = (mesh?.view() ?? [])
          .map((e) => ({
            id: e.peer,
            models: e.record.models.map((m) => ({
              name: m.name,
              digest: m.digest,
              loaded: e.record.loaded.includes(m.digest),
            })),
            freeSlots: e.record.freeSlots,
            tokensPerSecond: e.record.tokensPerSecond,
            queueDepth: e.record.queueDepth,
            latencyMs: mesh?.latencyMs(e.peer) ?? null,
            lastSeen: new Date(e.lastSeen).toISOString(),
            ...standingJson(mesh?.standing?.(e.peer)),
            connection: mesh?.connectionKind?.(e.peer) ?? null,
          }))
          .sort((a, b) => a.id.localeCompare(b.id))
        const body: PeersResponse = {
          enabled: mesh !== undefined,
          id: mesh?.peerId ?? null,
          addrs: mesh?.multiaddrs() ?? [],
          reachability: mesh?.reachability?.() ?? null,
          peers,
          ...(mesh?.gossip === undefined ? {} : { gossip: mesh.gossip() }),
        }
        sendJson(res, 200, body)
      },
    },
    {
      method: 'GET',
      path: '/substrate/v1/receipts',
      handler: async (_req, res) => {
        const receipts = (c.recentReceipts?.() ?? []).map((r) => ({
          role: r.role,
          ...receiptJson(r.receipt, { signed: true }),
        }))
        sendJson(res, 200, { receipts })
      },
    },
  ]
}
