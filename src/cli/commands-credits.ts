// `substrate credits` (a member's balance, what today's floor still covers, earned, spent,
// and the receipts behind each figure) and `substrate ledger log|verify|stats|vouch`.
// Everything comes from the daemon's native API (routes-ledger.ts), which also checks every
// id; this only renders it.

import type {
  CreditsResponse,
  LedgerOpInfo,
  LedgerVerifyResponse,
  LedgerVouchResponse,
} from '../api/types.ts'
import { SubstrateError } from '../errors.ts'
import { type Command, table, writeJson } from './render.ts'

/** Receipts listed under `substrate credits` before "… and N more". */
const RECEIPTS_SHOWN = 20

export function creditsText(body: CreditsResponse): string {
  const b = body.balance
  const lines = [
    `member       ${b.member}${body.self ? ' (this node)' : ''}${b.frozen ? ' FROZEN (fork proof)' : ''}`,
    `balance      ${b.balance} credits`,
    `floor        ${b.floorLeftToday} of ${b.floorPerDay} left today${b.vouched ? '' : ' (not vouched for: a quarter floor)'}`,
    `earned       ${b.earned}`,
    `spent        ${b.spent} (${b.floorCovered} paid by the daily floor)`,
    `usable now   ${b.balance + b.floorLeftToday}`,
    '',
  ]
  if (body.earnings.length > 0) {
    lines.push('Earned, per requester and day (capped per requester and day):')
    lines.push(
      table(
        ['DAY', 'REQUESTER', 'CREDITS', 'COUNTED', 'RECEIPTS'],
        body.earnings.map((l) => [
          l.day,
          l.counterparty,
          String(l.gross),
          String(l.earned),
          String(l.receipts.length),
        ]),
      ).trimEnd(),
      '',
    )
  }
  if (body.spending.length > 0) {
    lines.push('Spent, per day (the floor pays first):')
    lines.push(
      table(
        ['DAY', 'CREDITS', 'FLOOR PAID', 'CHARGED', 'RECEIPTS'],
        body.spending.map((l) => [
          l.day,
          String(l.gross),
          String(l.floorCovered),
          String(l.charged),
          String(l.receipts.length),
        ]),
      ).trimEnd(),
      '',
    )
  }
  if (body.excluded.length > 0) {
    lines.push('Receipts that count for nothing:')
    lines.push(
      table(
        ['RECEIPT', 'ROLE', 'WHY'],
        body.excluded.map((e) => [e.receipt, e.role, whyExcluded[e.reason]]),
      ).trimEnd(),
      '',
    )
  }
  const receipts = [
    ...body.earnings.flatMap((l) => l.receipts.map((r) => `${r}  earned  ${l.day}  from ${l.counterparty}`)),
    ...body.spending.flatMap((l) => l.receipts.map((r) => `${r}  spent   ${l.day}`)),
  ]
  if (receipts.length > 0) {
    lines.push('Receipts:')
    lines.push(...receipts.slice(0, RECEIPTS_SHOWN).map((r) => `  ${r}`))
    if (receipts.length > RECEIPTS_SHOWN) {
      lines.push(`  … and ${receipts.length - RECEIPTS_SHOWN} more (--json lists all)`)
    }
    lines.push('')
  }
  if (receipts.length === 0 && body.excluded.length === 0) {
    lines.push('No receipts yet: run a job on the mesh, or serve one, to move credits.', '')
  }
  return lines.join('\n')
}

const whyExcluded: Record<CreditsResponse['excluded'][number]['reason'], string> = {
  'same-member': 'worker and requester are one member: mints nothing',
  'void-worker': 'the worker is frozen or proven to have cheated',
  'not-carried': 'only frozen logs carry it',
}

const credits: Command = {
  usage: 'substrate credits [MEMBER]',
  description:
    "Shows a member's credits as this node's ledger folds them: the balance (earned minus what the\n" +
    'daily floors did not pay for), what the floor still covers today, earned and spent, and the\n' +
    'receipts behind each figure. Without MEMBER: the member this node is bound to. Credits cannot\n' +
    'be transferred; they buy priority on busy workers, never exclusion: a member with none is\n' +
    'still served from the reserved commons share.',
  examples: ['substrate credits', 'substrate credits 12D3KooW… --json'],
  flags: {},
  args: { min: 0, max: 1 },
  async run(ctx, { positionals }) {
    const body = await (await ctx.daemon()).credits(positionals[0])
    if (ctx.json) return writeJson(ctx.io.stdout, body)
    ctx.io.stdout.write(creditsText(body))
  },
}

export function logTable(ops: LedgerOpInfo[]): string {
  return table(
    ['AT', 'AUTHOR', 'SEQ', 'KIND', 'WHAT'],
    ops.map((o) => [o.at, o.author, String(o.seq), o.kind, describeFacts(o)]),
  )
}

function describeFacts(o: LedgerOpInfo): string {
  const f = o.facts
  switch (o.kind) {
    case 'receipt':
      return `${String(f.receipt)}: ${String(f.worker)} served ${String(f.requester)}, ${String(f.outputTokens)} tokens out`
    case 'node-binding':
      return `binds node ${String(f.node)}`
    case 'vouch':
      return `vouches for ${String(f.member)}`
    case 'fraud-proof':
    case 'spot-check-verdict':
      return `worker ${String(f.worker)}, receipt ${String(f.receipt)}${'honest' in f ? (f.honest === true ? ': honest' : ': NOT honest') : ''}`
    default:
      return ''
  }
}

export function verifyText(v: LedgerVerifyResponse): string {
  const head = v.ok
    ? `ok: ${v.ops} ops of ${v.authors} authors re-verified; a cold fold gives the live balances (${v.tookMs} ms)\n`
    : `NOT ok: ${v.problems.length} ops failed, balances ${v.balancesMatch ? 'match' : 'DIFFER'} (${v.ops} ops, ${v.tookMs} ms)\n`
  const problems =
    v.problems.length === 0
      ? ''
      : table(
          ['AUTHOR', 'SEQ', 'PROBLEM'],
          v.problems.map((p) => [p.author, String(p.seq), p.problem]),
        )
  const mismatched =
    v.mismatched.length === 0 ? '' : `members whose balance differs: ${v.mismatched.join(', ')}\n`
  return head + problems + mismatched
}

export function vouchText(v: LedgerVouchResponse): string {
  const others = v.vouchers.length - 1
  return [
    `vouched for  ${v.member}`,
    `by           ${v.voucher} (this node's member)`,
    `op           ${v.cid} (seq ${v.seq} of its log; ledger sync spreads it)`,
    `vouches      ${others === 0 ? 'yours' : `yours and ${others} more`}`,
    v.vouched
      ? `floor        ${v.floorPerDay} credits a day: vouched, the full floor`
      : `floor        ${v.floorPerDay} credits a day: not vouched yet (more vouches from members are needed)`,
    '',
  ].join('\n')
}

const SUBCOMMANDS = ['log', 'verify', 'stats', 'vouch'] as const

const ledger: Command = {
  usage: 'substrate ledger log|verify|stats|vouch MEMBER [--author ID] [--limit N]',
  description:
    "Looks at this node's copy of the credits ledger: a hash-chained log of signed ops per author\n" +
    '(member genesis, node bindings, receipts, spot checks, fraud proofs, vouches), merged from\n' +
    "every peer it synced with; or adds this node's member's vouch for another member.\n" +
    '  log     the newest ops first (--author ID: one log only; --limit N, 1-1000, default 50)\n' +
    '  verify  re-checks every stored op (signature, chain, facts) and folds the whole ledger cold,\n' +
    '          comparing with the live balances; exits non-zero when anything fails\n' +
    '  stats   how many ops, authors, members and receipts; frozen authors; a digest of the heads\n' +
    '          (two nodes with the same digest hold the same ledger)\n' +
    '  vouch MEMBER\n' +
    "          signs this node's member's vouch for MEMBER (a 12D3KooW… id, as 'substrate id'\n" +
    '          shows it) into its log; ledger sync spreads it. Membership is by vouching: a vouched\n' +
    '          member gets the full daily floor (a key nobody vouched for gets a quarter of it),\n' +
    "          and only a vouched member's fraud proofs stop a cheating worker's receipts from\n" +
    '          counting. Anyone can make a key, so vouch only for people you know. Not for\n' +
    '          yourself; once per member is enough; a vouch cannot be taken back.',
  examples: [
    'substrate ledger log --limit 10',
    'substrate ledger log --author 12D3KooW… --json',
    'substrate ledger verify',
    'substrate ledger stats --json',
    'substrate ledger vouch 12D3KooW…',
  ],
  flags: {
    author: { type: 'string', value: 'ID', help: 'log: only the ops of this author' },
    limit: { type: 'string', value: 'N', help: 'log: at most N ops (1-1000, default 50)' },
  },
  args: { min: 1, max: 2 },
  async run(ctx, { values, positionals }) {
    const sub = positionals[0] as (typeof SUBCOMMANDS)[number]
    if (!SUBCOMMANDS.includes(sub)) {
      throw new SubstrateError('E_INVALID_ARGUMENT', `unknown ledger command '${positionals[0]}'`, {
        hint: `use one of ${SUBCOMMANDS.join(', ')}; see 'substrate help ledger'`,
      })
    }
    if (sub !== 'log' && (values.author !== undefined || values.limit !== undefined)) {
      throw new SubstrateError('E_INVALID_ARGUMENT', `--author and --limit are for 'ledger log' only`)
    }
    const member = positionals[1]
    if (sub === 'vouch') {
      if (member === undefined) {
        throw new SubstrateError('E_INVALID_ARGUMENT', "'ledger vouch' needs the MEMBER to vouch for", {
          hint: "usage: substrate ledger vouch MEMBER (their 'substrate id')",
        })
      }
      const vouch = await (await ctx.daemon()).vouch(member)
      if (ctx.json) return writeJson(ctx.io.stdout, vouch)
      ctx.io.stdout.write(vouchText(vouch))
      return
    }
    if (member !== undefined) {
      throw new SubstrateError('E_INVALID_ARGUMENT', `unexpected argument '${member}' to 'ledger ${sub}'`, {
        hint: "see 'substrate help ledger'",
      })
    }
    const client = await ctx.daemon()
    const out = ctx.io.stdout
    if (sub === 'log') {
      const limit = values.limit === undefined ? undefined : parseLimit(String(values.limit))
      const author = typeof values.author === 'string' ? values.author : undefined
      const { ops } = await client.ledgerLog({ author, limit })
      if (ctx.json) return writeJson(out, { ops })
      out.write(ops.length === 0 ? 'the ledger is empty\n' : logTable(ops))
      return
    }
    if (sub === 'verify') {
      const report = await client.ledgerVerify()
      if (ctx.json) writeJson(out, report)
      else out.write(verifyText(report))
      if (!report.ok) {
        throw new SubstrateError('E_LEDGER_INCONSISTENT', 'the ledger did not verify', {
          hint: 'a stored op or the live balances are wrong: keep the home for a bug report',
        })
      }
      return
    }
    const stats = await client.ledgerStats()
    if (ctx.json) return writeJson(out, stats)
    out.write(
      [
        `node          ${stats.node}`,
        `member        ${stats.member}`,
        `ops           ${stats.ops} from ${stats.authors} authors`,
        `members       ${stats.members}`,
        `receipts      ${stats.receipts}`,
        `balances      ${stats.balances} members earned or spent`,
        `frozen        ${stats.frozen.length === 0 ? 'none' : stats.frozen.join(', ')}`,
        `heads digest  ${stats.headsDigest}`,
        `checkpoint    ${stats.checkpoint === null ? 'none yet' : `through op ${stats.checkpoint.through}, saved ${stats.checkpoint.savedAt}`}`,
        '',
      ].join('\n'),
    )
  },
}

function parseLimit(text: string): number {
  const n = /^[0-9]{1,7}$/.test(text) ? Number(text) : Number.NaN
  if (!(n >= 1 && n <= 1000)) {
    throw new SubstrateError(
      'E_INVALID_ARGUMENT',
      `--limit must be a whole number from 1 to 1000, not '${text}'`,
    )
  }
  return n
}

export const commands: Record<string, Command> = { credits, ledger }
