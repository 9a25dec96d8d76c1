// The numbers that bound what a node accepts from the network. They live in one place so a
// reviewer can see every hard limit at once, and so tests can refer to them by name rather
// than repeating magic numbers.

export const KiB = 1024
export const MiB = 1024 * KiB

export const SECOND_MS = 1000
export const MINUTE_MS = 60 * SECOND_MS
export const HOUR_MS = 60 * MINUTE_MS

/**
 * How far a peer's clock may run ahead of ours before its records count as future-dated,
 * and how long after expiry we still accept one. NTP keeps honest hosts within a second;
 * 30 s tolerates a laptop waking from sleep without widening the replay window much.
 */
export const DEFAULT_MAX_CLOCK_SKEW_MS = 30 * SECOND_MS

/** Every envelope carries exactly this many random nonce bytes: 128 bits never collide by chance. */
export const NONCE_BYTES = 16

/** Ed25519 signatures are always 64 bytes; anything else is rejected before verifying. */
export const SIGNATURE_BYTES = 64

/** The only envelope version this code understands. A new layout gets a new number. */
export const ENVELOPE_VERSION = 1

/**
 * Default capacity of the in-memory replay guard. Each entry is a signer id plus a nonce
 * (about 100 bytes with Map overhead), so this bounds it to a few tens of MiB.
 */
export const DEFAULT_REPLAY_GUARD_ENTRIES = 100_000
