// Nodes with a ledger and ledger sync on real libp2p hosts (127.0.0.1), and a scripted
// responder for the hostile-peer cases: it speaks `/substrate/ledger-sync/1` through the
// same frame channel as the real one, but sends whatever the test says.

import type { Stream } from '@libp2p/interface'
import { generateIdentity, type Identity } from '../../src/identity/keys.ts'
import { createLedger, type Ledger } from '../../src/ledger/ledger.ts'
import type { LedgerOp, OpDraft } from '../../src/ledger/ops.ts'
import { silentLogger } from '../../src/logger.ts'
import { type FrameChannel, frameChannel } from '../../src/mesh/job-codec.ts'
import { createLedgerSync, type LedgerSync, type LedgerSyncInit } from '../../src/mesh/ledger-sync.ts'
import {
  LEDGER_SYNC_PROTOCOL,
  MAX_PULL_FRAME_BYTES,
  type PullFrame,
  pullFrameSchema,
  type ResponderFrame,
} from '../../src/mesh/ledger-sync-codec.ts'
import { createMeshNode, type MeshNode } from '../../src/mesh/libp2p-node.ts'
import { type Db, openDatabase } from '../../src/store/database.ts'
import { chain, genesisOp, identities, makeReceipt, receiptOp, T0 } from '../ledger/fixtures.ts'

export interface LedgerPeer {
  identity: Identity
  mesh: MeshNode
  db: Db
  ledger: Ledger
  sync: LedgerSync
  /** Moves this node's ledger clock (ms added to the real clock). */
  skew: { ms: number }
  stop(): Promise<void>
}

export async function startLedgerPeer(
  options: { init?: LedgerSyncInit; skewMs?: number; dbPath?: string; start?: boolean } = {},
): Promise<LedgerPeer> {
  const identity = generateIdentity()
  const mesh = await createMeshNode({ identity, logger: silentLogger })
  const db = openDatabase(options.dbPath ?? ':memory:')
  const skew = { ms: options.skewMs ?? 0 }
  const ledger = createLedger({ db }, { now: () => Date.now() + skew.ms })
  ledger.start()
  const sync = createLedgerSync({ mesh, ledger, logger: silentLogger }, options.init)
  await mesh.start()
  if (options.start ?? true) await sync.start()
  return {
    identity,
    mesh,
    db,
    ledger,
    sync,
    skew,
    async stop() {
      await sync.stop()
      await mesh.stop()
      ledger.stop()
      db.close()
    },
  }
}

export async function connect(a: { mesh: MeshNode }, b: { mesh: MeshNode }): Promise<void> {
  await a.mesh.dial(b.mesh.multiaddrs()[0]!, 5_000)
}

/** The heads of a ledger as comparable plain data. */
export function headsOf(ledger: Ledger): { vector: string[]; frozen: string[] } {
  const heads = ledger.log.heads()
  return {
    vector: [...heads.vector]
      .filter(([a]) => !heads.frozen.has(a))
      .map(([a, h]) => `${a}:${h.seq}:${h.head}`)
      .sort(),
    frozen: [...heads.frozen].sort(),
  }
}

/** Balances without the time-dependent fields that differ by the moment they are read. */
export const balancesOf = (ledger: Ledger) =>
  ledger
    .balances()
    .map((b) => JSON.stringify(b))
    .sort()

export type Script = (
  ch: FrameChannel<PullFrame, ResponderFrame>,
  request: PullFrame,
  session: number,
) => Promise<void>

/** A libp2p host whose ledger sync handler runs `script` for every session. */
export async function startScriptedResponder(
  script: Script,
): Promise<{ mesh: MeshNode; sessions: () => number; stop(): Promise<void> }> {
  const identity = generateIdentity()
  const mesh = await createMeshNode({ identity, logger: silentLogger })
  await mesh.start()
  let sessions = 0
  await mesh.libp2p.handle(LEDGER_SYNC_PROTOCOL, (stream: Stream) => {
    const ch = frameChannel<PullFrame, ResponderFrame>(stream, pullFrameSchema, MAX_PULL_FRAME_BYTES)
    const session = sessions++
    void (async () => {
      try {
        const request = await ch.read({ timeoutMs: 5_000 })
        await script(ch, request, session)
      } catch {
        ch.reset('script failed')
      }
    })()
  })
  return { mesh, sessions: () => sessions, stop: () => mesh.stop() }
}

/**
 * Signed ops of a few parties that serve each other: each starts its log with a genesis,
 * and every receipt is logged twice (worker's and requester's log), as daemons do. Each
 * call continues the same chains.
 */
export function receiptWorld(parties: Identity[] = identities(4)) {
  const last = new Map<Identity, LedgerOp>()
  let clock = T0
  const append = (author: Identity, draft: OpDraft, out: Uint8Array[]) => {
    const after = last.get(author)
    const [op] = chain(author, [draft], { ...(after === undefined ? {} : { after }), at: clock })
    last.set(author, op!)
    out.push(op!.bytes)
  }
  let receipts = 0
  return {
    parties,
    genesis(): Uint8Array[] {
      const out: Uint8Array[] = []
      for (const p of parties) append(p, genesisOp(), out)
      return out
    },
    receipts(count: number, among: Identity[] = parties): Uint8Array[] {
      const out: Uint8Array[] = []
      for (let i = 0; i < count; i++) {
        clock += 10
        const worker = among[receipts % among.length]!
        const requester = among[(receipts + 1) % among.length]!
        receipts++
        const receipt = makeReceipt(worker, requester, { at: clock })
        append(worker, receiptOp(receipt), out)
        append(requester, receiptOp(receipt), out)
      }
      return out
    },
  }
}

export const totalBytes = (ops: readonly Uint8Array[]) => ops.reduce((n, op) => n + op.length, 0)
