// Native routes about credits and the ledger (issue 5): a member's balance and why, every
// balance, the op log, a full re-verification, and counts. Read-only but for one deliberate
// act of this node's member, vouching for another member; every other op enters the ledger
// through this node's own jobs and through sync.

import { z } from 'zod'
import { SubstrateError } from '../errors.ts'
import { publicKeyFromId } from '../identity/keys.ts'
import { auditLedgerYielding, ledgerStats } from '../ledger/audit.ts'
import type { Ledger } from '../ledger/ledger.ts'
import type { Db } from '../store/database.ts'
import { listLatestLedgerOps } from '../store/ledger-table.ts'
import { readJson, sendJson } from './http.ts'
import type { Route } from './router.ts'
import type {
  CreditsResponse,
  LedgerBalancesResponse,
  LedgerOpInfo,
  LedgerStatsResponse,
  LedgerVerifyResponse,
  LedgerVouchResponse,
} from './types.ts'

export interface LedgerRouteComponents {
  db: Db
  ledger: Ledger
  /** this daemon's node id and the member it is bound to */
  node: string
  member: string
  /** signs a vouch op for `member` in this member's log (the member's key must be here) */
  vouch?: (member: string) => { cid: string; seq: number }
}

export const MAX_LOG_LIMIT = 1000

/** Query parameters, strictly: an unknown one is a mistake worth saying, not ignoring. */
function readQuery<S extends z.ZodObject>(url: URL, schema: S): z.infer<S> {
  const raw: Record<string, string> = {}
  for (const [key, value] of url.searchParams) {
    if (key in raw) throw new SubstrateError('E_LEDGER_BAD_QUERY', `query parameter '${key}' is given twice`)
    raw[key] = value
  }
  const parsed = schema.strict().safeParse(raw)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    const where = issue?.path.join('.') || (issue?.code === 'unrecognized_keys' ? issue.keys.join(', ') : '')
    throw new SubstrateError(
      'E_LEDGER_BAD_QUERY',
      `bad query parameter ${where}: ${issue?.message ?? 'invalid'}`,
      {
        hint: `see the API section of the README for ${url.pathname}`,
      },
    )
  }
  return parsed.data as z.infer<S>
}

/** A member or node id as the ledger names it: an Ed25519 peer id. */
function memberId(id: string, what: string): string {
  try {
    publicKeyFromId(id)
    return id
  } catch {
    throw new SubstrateError(
      'E_LEDGER_BAD_MEMBER',
      `${what} '${id.slice(0, 80)}' is not an Ed25519 peer id`,
      {
        hint: "ids look like 12D3KooW…; 'substrate id' shows this node's",
      },
    )
  }
}

const creditsQuery = z.object({ member: z.string().max(128).optional() })
const logQuery = z.object({
  author: z.string().max(128).optional(),
  limit: z
    .string()
    .regex(/^[0-9]{1,7}$/, 'expected a whole number')
    .transform(Number)
    .pipe(z.number().int().min(1).max(MAX_LOG_LIMIT))
    .optional(),
})
const noQuery = z.object({})
const vouchBody = z.strictObject({ member: z.string().max(128) })

export function ledgerRoutes(c: LedgerRouteComponents): Route[] {
  // One re-verification at a time: a second request while one runs gets the same answer.
  let auditing: Promise<LedgerVerifyResponse> | undefined
  const audit = () => {
    auditing ??= auditLedgerYielding(c.db, c.ledger).finally(() => {
      auditing = undefined
    })
    return auditing
  }
  return [
    {
      method: 'GET',
      path: '/substrate/v1/credits',
      handler: async (_req, res, url) => {
        const q = readQuery(url, creditsQuery)
        const member = q.member === undefined ? c.member : memberId(q.member, 'member')
        const why = c.ledger.explain(member)
        const body: CreditsResponse = { node: c.node, self: member === c.member, ...why }
        sendJson(res, 200, body)
      },
    },
    {
      method: 'GET',
      path: '/substrate/v1/ledger/balances',
      handler: async (_req, res, url) => {
        readQuery(url, noQuery)
        const body: LedgerBalancesResponse = {
          balances: c.ledger.balances(),
          headsDigest: ledgerStats(c.db, c.ledger).headsDigest,
        }
        sendJson(res, 200, body)
      },
    },
    {
      method: 'GET',
      path: '/substrate/v1/ledger/log',
      handler: async (_req, res, url) => {
        const q = readQuery(url, logQuery)
        const author = q.author === undefined ? undefined : memberId(q.author, 'author')
        const ops: LedgerOpInfo[] = listLatestLedgerOps(c.db, q.limit ?? 50, author).map((row) => ({
          cid: row.cid,
          author: row.author,
          seq: row.seq,
          kind: row.kind,
          at: new Date(row.at).toISOString(),
          facts: JSON.parse(row.facts) as Record<string, unknown>,
        }))
        sendJson(res, 200, { ops })
      },
    },
    {
      method: 'GET',
      path: '/substrate/v1/ledger/verify',
      handler: async (_req, res, url) => {
        readQuery(url, noQuery)
        const body: LedgerVerifyResponse = await audit()
        sendJson(res, 200, body)
      },
    },
    {
      // Membership by vouching (DESIGN.md): a vouched member gets the full floor, and only a
      // vouched member's fraud proofs void a worker.
      method: 'POST',
      path: '/substrate/v1/ledger/vouch',
      handler: async (req, res, url) => {
        readQuery(url, noQuery)
        const { member } = await readJson(req, vouchBody)
        const target = memberId(member, 'member')
        if (c.vouch === undefined)
          throw new SubstrateError('E_NOT_FOUND', 'this node holds no member key to vouch with', {
            hint: "vouch from a node that holds the member's key",
          })
        if (target === c.member)
          throw new SubstrateError('E_INVALID_ARGUMENT', 'a member cannot vouch for itself', {
            hint: 'vouch for another member, one whose owner you know',
          })
        if (c.ledger.log.isFrozen(c.member)) {
          throw new SubstrateError(
            'E_LEDGER_FROZEN',
            `this node's member ${c.member} is frozen by a fork proof`,
            {
              hint: "nothing it signs counts; 'substrate ledger stats' lists frozen authors",
            },
          )
        }
        if (c.ledger.vouchersOf(target).includes(c.member)) {
          throw new SubstrateError(
            'E_LEDGER_ALREADY_VOUCHED',
            `this node's member already vouched for ${target}`,
            {
              hint: `a second vouch changes nothing; 'substrate ledger log --author ${c.member}' shows it`,
            },
          )
        }
        // Only the CID and seq: the node's vouch() hands back the whole op, bytes and all.
        const { cid, seq } = c.vouch(target)
        const after = c.ledger.balanceOf(target)
        const body: LedgerVouchResponse = {
          member: target,
          voucher: c.member,
          cid,
          seq,
          vouchers: c.ledger.vouchersOf(target),
          vouched: after.vouched,
          floorPerDay: after.floorPerDay,
        }
        sendJson(res, 200, body)
      },
    },
    {
      method: 'GET',
      path: '/substrate/v1/ledger/stats',
      handler: async (_req, res, url) => {
        readQuery(url, noQuery)
        const body: LedgerStatsResponse = { node: c.node, member: c.member, ...ledgerStats(c.db, c.ledger) }
        sendJson(res, 200, body)
      },
    },
  ]
}
