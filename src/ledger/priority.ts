// How a worker orders the requests waiting for it (DESIGN.md: "Credits buy priority, never
// exclusivity"). Requesters with a positive balance are served by standing, highest first;
// requesters at floor level (balance ≤ 0) are served first-come first-served; and a
// reserved commons share of the order and of the slots always goes to floor-level
// requesters when any are waiting, so a requester with zero credits is always served.
// Pure functions of their arguments: the same queue gives the same order on every node.

export interface Standing {
  member: string
  /** Credits beyond the floors (ledger balance); ≤ 0 means floor level. */
  balance: number
  /** What today's floor still covers for this member. */
  floorLeftToday: number
}

export interface QueuedRequest {
  id: string
  standing: Standing
  /** Unix ms; earlier first among equals. */
  enqueuedAt: number
}

export interface PriorityInit {
  /** Share of slots and of the order kept for floor-level requesters (governance parameter). */
  reservedCommonsShare?: number
}

export const DEFAULT_RESERVED_COMMONS_SHARE = 0.25

export function isFloorLevel(standing: Standing): boolean {
  return standing.balance <= 0
}

/**
 * The order to serve `queue` in: in every prefix of n requests at least
 * ⌊n · reservedCommonsShare⌋ are floor-level ones while any are waiting.
 */
export function orderQueue(queue: readonly QueuedRequest[], init: PriorityInit = {}): QueuedRequest[] {
  const share = clampShare(init.reservedCommonsShare ?? DEFAULT_RESERVED_COMMONS_SHARE)
  const { priority, floor } = split(queue)
  const order: QueuedRequest[] = []
  let p = 0
  let f = 0
  let floorTaken = 0
  while (p < priority.length || f < floor.length) {
    const floorTurn = floorTaken < Math.floor((order.length + 1) * share)
    if (f < floor.length && (floorTurn || p >= priority.length)) {
      order.push(floor[f++]!)
      floorTaken++
    } else {
      order.push(priority[p++]!)
    }
  }
  return order
}

export interface SlotState {
  /** Jobs this worker can run at once. */
  slots: number
  /** Jobs running now, of which `runningFloor` are floor-level. */
  running: number
  runningFloor: number
}

/**
 * Which waiting requests to start now. ⌈slots · share⌉ slots stay reserved for floor-level
 * requests: a priority request never takes the last free slots of an unfilled reservation,
 * even when no floor-level request is waiting yet, so one arriving next finds room. A worker
 * with one slot reserves none (see below).
 */
export function pickAdmissions(
  queue: readonly QueuedRequest[],
  slots: SlotState,
  init: PriorityInit = {},
): QueuedRequest[] {
  const share = clampShare(init.reservedCommonsShare ?? DEFAULT_RESERVED_COMMONS_SHARE)
  // A single slot cannot be held back: reserving it would exclude everyone with credits.
  // There the reserved share is kept in the order alone (orderQueue).
  const reserved = share > 0 && slots.slots > 1 ? Math.max(1, Math.ceil(slots.slots * share)) : 0
  let free = Math.max(0, slots.slots - slots.running)
  let reservedFree = Math.min(free, Math.max(0, reserved - slots.runningFloor))
  const picked: QueuedRequest[] = []
  for (const request of orderQueue(queue, init)) {
    if (free === 0) break
    if (isFloorLevel(request.standing)) {
      picked.push(request)
      free--
      if (reservedFree > 0) reservedFree--
    } else if (free > reservedFree) {
      picked.push(request)
      free--
    }
  }
  return picked
}

function split(queue: readonly QueuedRequest[]) {
  const priority: QueuedRequest[] = []
  const floor: QueuedRequest[] = []
  for (const r of queue) (isFloorLevel(r.standing) ? floor : priority).push(r)
  priority.sort(
    (a, b) => b.standing.balance - a.standing.balance || a.enqueuedAt - b.enqueuedAt || byId(a, b),
  )
  // Among floor-level requesters, those with floor left today come first; an exhausted
  // floor still gets served, after them.
  const exhausted = (r: QueuedRequest) => (r.standing.floorLeftToday > 0 ? 0 : 1)
  floor.sort((a, b) => exhausted(a) - exhausted(b) || a.enqueuedAt - b.enqueuedAt || byId(a, b))
  return { priority, floor }
}

const byId = (a: QueuedRequest, b: QueuedRequest) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
const clampShare = (share: number) => (Number.isFinite(share) ? Math.min(1, Math.max(0, share)) : 0)
