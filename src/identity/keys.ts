// A node's identity: one Ed25519 keypair kept in a private key file. Its printable id is
// the libp2p PeerId of the same key, so the id a user sees in the CLI, the signer named
// in every envelope and the peer the mesh dials are one and the same string.

import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  sign as signBytes,
  verify as verifyBytes,
} from 'node:crypto'
import { link, mkdir, open, rename, unlink } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { base58btc } from 'multiformats/bases/base58'
import { SubstrateError } from '../errors.ts'

export interface Identity {
  /** The raw 32-byte Ed25519 public key. */
  readonly publicKey: Uint8Array
  /** The libp2p PeerId string ("12D3KooW…"); `publicKeyFromId` turns it back into the key. */
  readonly id: string
  /** Ed25519 signature (64 bytes) over exactly these bytes; callers add domain separation. */
  sign(data: Uint8Array): Uint8Array
}

export const PUBLIC_KEY_BYTES = 32

// Identity multihash (0x00, length 0x24) of the libp2p protobuf PublicKey
// { Type: Ed25519 (field 1 = 0x08, value 0x01), Data: 32 bytes (field 2 = 0x12, length 0x20) }.
const PEER_ID_PREFIX = Uint8Array.of(0x00, 0x24, 0x08, 0x01, 0x12, 0x20)
const PEER_ID_BYTES = PEER_ID_PREFIX.length + PUBLIC_KEY_BYTES

export function idFromPublicKey(publicKey: Uint8Array): string {
  if (publicKey.length !== PUBLIC_KEY_BYTES) {
    throw new SubstrateError(
      'E_INVALID_ARGUMENT',
      `an Ed25519 public key is 32 bytes, got ${publicKey.length}`,
    )
  }
  const bytes = new Uint8Array(PEER_ID_BYTES)
  bytes.set(PEER_ID_PREFIX, 0)
  bytes.set(publicKey, PEER_ID_PREFIX.length)
  return base58btc.baseEncode(bytes)
}

/** Reverses `idFromPublicKey`; throws E_INVALID_ARGUMENT for anything but an Ed25519 PeerId. */
export function publicKeyFromId(id: string): Uint8Array {
  let bytes: Uint8Array
  try {
    bytes = base58btc.baseDecode(id)
  } catch (cause) {
    throw new SubstrateError('E_INVALID_ARGUMENT', `not a peer id: ${JSON.stringify(id.slice(0, 64))}`, {
      cause,
    })
  }
  const prefixMatches = PEER_ID_PREFIX.every((b, i) => bytes[i] === b)
  if (bytes.length !== PEER_ID_BYTES || !prefixMatches) {
    throw new SubstrateError(
      'E_INVALID_ARGUMENT',
      `not an Ed25519 peer id: ${JSON.stringify(id.slice(0, 64))}`,
    )
  }
  return bytes.slice(PEER_ID_PREFIX.length)
}

/** Checks an Ed25519 signature; any malformed key or signature is simply "not valid". */
export function verifySignature(publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== PUBLIC_KEY_BYTES) return false
  try {
    return verifyBytes(null, data, publicKeyObject(publicKey), signature)
  } catch {
    return false
  }
}

/** How many parsed public keys `verifySignature` keeps; a key object is a few hundred bytes. */
export const PUBLIC_KEY_CACHE_ENTRIES = 4096

// Parsing a raw key into a KeyObject costs about a fifth of an Ed25519 verify, and a ledger
// checks the same few thousand signers over and over. The cache maps the key's bytes to
// the parsed object only, never to a verdict, so it cannot change what verifies; it is
// bounded (oldest entry out first) so a flood of fresh keys costs memory once, not forever.
const publicKeyObjects = new Map<string, KeyObject>()

function publicKeyObject(publicKey: Uint8Array): KeyObject {
  const x = Buffer.from(publicKey).toString('base64url')
  let key = publicKeyObjects.get(x)
  if (key === undefined) {
    key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x }, format: 'jwk' })
    if (publicKeyObjects.size >= PUBLIC_KEY_CACHE_ENTRIES) {
      const oldest = publicKeyObjects.keys().next().value
      if (oldest !== undefined) publicKeyObjects.delete(oldest)
    }
    publicKeyObjects.set(x, key)
  }
  return key
}

/** How many parsed public keys are cached now: for tests of the bound. */
export function cachedPublicKeyCount(): number {
  return publicKeyObjects.size
}

// The private key stays off the Identity object (so it never leaks through a spread, a log
// line or JSON); only `privateKeySeed` reaches it, for libp2p, which must hold the key to
// run its Noise handshakes under the same PeerId.
const privateKeys = new WeakMap<Identity, KeyObject>()

function identityFromPrivateKey(privateKey: KeyObject): Identity {
  const jwk = createPublicKey(privateKey).export({ format: 'jwk' })
  const publicKey = new Uint8Array(Buffer.from(jwk.x ?? '', 'base64url'))
  const id = idFromPublicKey(publicKey)
  const identity: Identity = {
    publicKey,
    id,
    sign: (data) => new Uint8Array(signBytes(null, data, privateKey)),
  }
  privateKeys.set(identity, privateKey)
  return identity
}

/** The 32-byte Ed25519 seed of an identity made here; libp2p derives the same key from it. */
export function privateKeySeed(identity: Identity): Uint8Array {
  const key = privateKeys.get(identity)
  if (key === undefined) {
    throw new SubstrateError('E_INVALID_ARGUMENT', 'this identity was not created by identity/keys')
  }
  return new Uint8Array(Buffer.from(key.export({ format: 'jwk' }).d ?? '', 'base64url'))
}

/** A fresh identity that lives only in memory: for tests and throwaway nodes. */
export function generateIdentity(): Identity {
  return identityFromPrivateKey(generateKeyPairSync('ed25519').privateKey)
}

/**
 * Loads the identity stored at `path` (PKCS#8 PEM), creating it on first run. The file
 * must be readable by its owner only: a key anyone else can read is not a secret, so we
 * refuse to start rather than sign with it.
 */
export async function loadOrCreateIdentity(path: string): Promise<Identity> {
  const existing = await loadIdentity(path)
  if (existing !== undefined) return existing
  return createIdentityFile(path)
}

async function loadIdentity(path: string): Promise<Identity | undefined> {
  let handle: Awaited<ReturnType<typeof open>>
  try {
    handle = await open(path, 'r')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new SubstrateError('E_CONFIG', `cannot read the identity key file ${path}`, { cause: err })
  }
  try {
    // fstat the open descriptor, not the path, so the file we check is the file we read.
    const stat = await handle.stat()
    if (!stat.isFile()) {
      throw new SubstrateError('E_CONFIG', `the identity key path ${path} is not a regular file`)
    }
    if ((stat.mode & 0o077) !== 0) {
      const mode = (stat.mode & 0o777).toString(8).padStart(3, '0')
      throw new SubstrateError(
        'E_CONFIG',
        `the identity key file ${path} is readable by other users (mode ${mode}); refusing to use it`,
        { hint: `run: chmod 600 ${path}` },
      )
    }
    const pem = await handle.readFile({ encoding: 'utf8' })
    return identityFromPrivateKey(parsePrivateKey(pem, path))
  } finally {
    await handle.close()
  }
}

function parsePrivateKey(pem: string, path: string): KeyObject {
  const hint =
    `restore ${path} from a backup, or move it aside to create a new identity ` +
    '(the node id will change and credits earned under the old id stay with the old key)'
  let key: KeyObject
  try {
    key = createPrivateKey({ key: pem, format: 'pem' })
  } catch (cause) {
    throw new SubstrateError('E_CONFIG', `the identity key file ${path} is not a valid private key`, {
      hint,
      cause,
    })
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new SubstrateError(
      'E_CONFIG',
      `the identity key file ${path} holds a ${key.asymmetricKeyType ?? 'unknown'} key, not Ed25519`,
      { hint },
    )
  }
  return key
}

async function createIdentityFile(path: string): Promise<Identity> {
  const dir = dirname(path)
  await mkdir(dir, { recursive: true, mode: 0o700 })
  const { privateKey } = generateKeyPairSync('ed25519')
  const pem = privateKey.export({ format: 'pem', type: 'pkcs8' }).toString()
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`)
  // 'wx' + 0o600: the key is never on disk with wider permissions, not even for a moment.
  const handle = await open(tmp, 'wx', 0o600)
  try {
    await handle.writeFile(pem)
    await handle.sync()
  } finally {
    await handle.close()
  }
  try {
    // link() refuses to replace an existing file, so if two processes start at once the
    // first key wins and both end up using it; rename() would let the second silently
    // overwrite the key the first is already signing with.
    await link(tmp, path)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') {
      await unlink(tmp)
      const winner = await loadIdentity(path)
      if (winner !== undefined) return winner
      throw new SubstrateError('E_CONFIG', `the identity key file ${path} vanished while being created`)
    }
    // Some filesystems have no hard links; fall back to the ordinary atomic rename.
    await rename(tmp, path).catch(async (cause: unknown) => {
      await unlink(tmp).catch(() => {})
      throw new SubstrateError('E_CONFIG', `cannot create the identity key file ${path}`, { cause })
    })
  }
  await unlink(tmp).catch(() => {})
  await syncDirectory(dir)
  return identityFromPrivateKey(privateKey)
}

// Without this a crash right after creation can leave a directory entry that was never
// written, and the node would come back with a different id.
async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r').catch(() => undefined)
  if (handle === undefined) return
  await handle.sync().catch(() => {})
  await handle.close()
}
