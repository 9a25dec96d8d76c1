// Version vectors for ledger sync: what a node holds, as author → (highest contiguous seq,
// CID of the op there), plus the authors it holds fork proofs for. Two nodes exchange
// these (gossiped heads) and `diff` says what one must send the other: the cost is
// proportional to the difference, never to the ledger's size.
//
// The head CID is what makes a fork visible to sync: two nodes that saw different branches
// of an equivocating author can hold the same seq, and only the CID shows they differ.

export interface AuthorHead {
  seq: number
  head: string
}

export interface Heads {
  vector: ReadonlyMap<string, AuthorHead>
  frozen: ReadonlySet<string>
}

/** What to send a peer, computed from its heads and ours. */
export interface SyncPlan {
  /** Send our ops `from..to` (inclusive) of `author`. */
  ranges: Array<{ author: string; from: number; to: number }>
  /**
   * Send our op at `seq` if its CID is not `head` (null: send it anyway). Where the peer's
   * head is at or below ours, we compare at its head; where the peer is ahead, only the
   * peer can compare, so we send our head op (one op per such author; a duplicate there
   * costs a hash and a lookup). Either way, two branches of one author meet somewhere,
   * and holding both ops at one seq is a fork proof.
   */
  probes: Array<{ author: string; seq: number; head: string | null }>
  /** Authors we hold a fork proof for and the peer does not know are frozen. */
  forkProofs: string[]
}

export function emptyHeads(): Heads {
  return { vector: new Map(), frozen: new Set() }
}

export function diff(local: Heads, remote: Heads): SyncPlan {
  const plan: SyncPlan = { ranges: [], probes: [], forkProofs: [] }
  for (const author of local.frozen) if (!remote.frozen.has(author)) plan.forkProofs.push(author)
  for (const [author, mine] of local.vector) {
    // A frozen author's ops are void everywhere once the proof arrives: don't ship them.
    if (local.frozen.has(author) || remote.frozen.has(author)) continue
    const theirs = remote.vector.get(author)
    if (theirs === undefined) {
      plan.ranges.push({ author, from: 1, to: mine.seq })
      continue
    }
    if (theirs.seq > mine.seq) plan.probes.push({ author, seq: mine.seq, head: null })
    else if (theirs.seq < mine.seq || theirs.head !== mine.head) {
      plan.probes.push({ author, seq: theirs.seq, head: theirs.head })
    }
    if (theirs.seq < mine.seq) plan.ranges.push({ author, from: theirs.seq + 1, to: mine.seq })
  }
  return plan
}

/** Number of ops a plan sends (fork proofs count two). */
export function planSize(plan: SyncPlan): number {
  return (
    plan.ranges.reduce((n, r) => n + r.to - r.from + 1, 0) + plan.probes.length + 2 * plan.forkProofs.length
  )
}

/** Plain data for the wire or JSON: [author, seq, head] triples and the frozen authors, sorted. */
export function headsToJSON(heads: Heads): { vector: Array<[string, number, string]>; frozen: string[] } {
  return {
    vector: [...heads.vector].map(([a, h]): [string, number, string] => [a, h.seq, h.head]).sort(byFirst),
    frozen: [...heads.frozen].sort(),
  }
}

export function headsFromJSON(json: { vector: Array<[string, number, string]>; frozen: string[] }): Heads {
  return {
    vector: new Map(json.vector.map(([a, seq, head]) => [a, { seq, head }])),
    frozen: new Set(json.frozen),
  }
}

const byFirst = (a: [string, number, string], b: [string, number, string]) =>
  a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0
