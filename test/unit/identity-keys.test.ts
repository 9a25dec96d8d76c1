import assert from 'node:assert/strict'
import { createPrivateKey, generateKeyPairSync } from 'node:crypto'
import { chmod, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { base58btc } from 'multiformats/bases/base58'
import { SubstrateError } from '../../src/errors.ts'
import {
  generateIdentity,
  idFromPublicKey,
  loadOrCreateIdentity,
  publicKeyFromId,
  verifySignature,
} from '../../src/identity/keys.ts'

// Cross-implementation vector: the Ed25519 key from the libp2p peer-id spec test vectors
// (seed and public key), with the PeerId other libp2p implementations derive from it.
const SPEC_SEED = Buffer.from('7e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d', 'hex')
const SPEC_PUBLIC_KEY = Buffer.from('1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e', 'hex')
const SPEC_PEER_ID = '12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq'
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')

let dir: string
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'substrate-keys-'))
})
after(async () => {
  await rm(dir, { recursive: true, force: true })
})

function rejectsWith(code: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof SubstrateError, `expected a SubstrateError, got ${String(err)}`)
    assert.equal(err.code, code)
    if (pattern) assert.match(`${err.message} ${err.hint ?? ''}`, pattern)
    return true
  }
}

describe('loadOrCreateIdentity', () => {
  test('creates the key file with mode 0600 on first run, in a new directory', async () => {
    const path = join(dir, 'fresh', 'nested', 'identity.key')
    const identity = await loadOrCreateIdentity(path)
    assert.equal((await stat(path)).mode & 0o777, 0o600)
    assert.equal((await stat(join(dir, 'fresh', 'nested'))).mode & 0o077, 0)
    assert.equal(identity.publicKey.length, 32)
  })

  test('leaves no temporary file behind after creating the key', async () => {
    const sub = join(dir, 'tidy')
    await loadOrCreateIdentity(join(sub, 'identity.key'))
    assert.deepEqual(await readdir(sub), ['identity.key'])
  })

  test('reloading returns the same id and public key', async () => {
    const path = join(dir, 'reload.key')
    const first = await loadOrCreateIdentity(path)
    const second = await loadOrCreateIdentity(path)
    assert.equal(second.id, first.id)
    assert.deepEqual(second.publicKey, first.publicKey)
  })

  test('a signature made before reloading verifies with the reloaded public key', async () => {
    const path = join(dir, 'sign.key')
    const data = new TextEncoder().encode('hello')
    const sig = (await loadOrCreateIdentity(path)).sign(data)
    const reloaded = await loadOrCreateIdentity(path)
    assert.equal(sig.length, 64)
    assert.ok(verifySignature(reloaded.publicKey, data, sig))
  })

  test('concurrent first runs on one path all end up with the same identity', async () => {
    const path = join(dir, 'race.key')
    const ids = await Promise.all(Array.from({ length: 8 }, () => loadOrCreateIdentity(path)))
    assert.equal(new Set(ids.map((i) => i.id)).size, 1)
    assert.equal(ids[0]!.id, (await loadOrCreateIdentity(path)).id)
  })

  test('refuses a corrupt key file and says how to recover', async () => {
    const path = join(dir, 'corrupt.key')
    await writeFile(path, 'not a key at all\n', { mode: 0o600 })
    await assert.rejects(
      loadOrCreateIdentity(path),
      rejectsWith('E_CONFIG', /not a valid private key.*backup/s),
    )
    assert.equal(await readFile(path, 'utf8'), 'not a key at all\n', 'a bad key file is never overwritten')
  })

  test('refuses a key file holding a key that is not Ed25519', async () => {
    const path = join(dir, 'ec.key')
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    await writeFile(path, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 })
    await assert.rejects(loadOrCreateIdentity(path), rejectsWith('E_CONFIG', /not Ed25519/))
  })

  test('refuses a group-readable key file and hints at chmod 600', async () => {
    const path = join(dir, 'group.key')
    await loadOrCreateIdentity(path)
    await chmod(path, 0o640)
    await assert.rejects(loadOrCreateIdentity(path), rejectsWith('E_CONFIG', /mode 640.*chmod 600/s))
  })

  test('refuses a world-readable key file', async () => {
    const path = join(dir, 'world.key')
    await loadOrCreateIdentity(path)
    await chmod(path, 0o604)
    await assert.rejects(loadOrCreateIdentity(path), rejectsWith('E_CONFIG', /readable by other users/))
  })

  test('refuses a directory where the key file should be', async () => {
    await assert.rejects(loadOrCreateIdentity(dir), rejectsWith('E_CONFIG', /not a regular file/))
  })

  test('derives the libp2p peer id for the spec test vector key', async () => {
    const path = join(dir, 'spec.key')
    const key = createPrivateKey({
      key: Buffer.concat([PKCS8_ED25519_PREFIX, SPEC_SEED]),
      format: 'der',
      type: 'pkcs8',
    })
    await writeFile(path, key.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 })
    const identity = await loadOrCreateIdentity(path)
    assert.deepEqual(Buffer.from(identity.publicKey), SPEC_PUBLIC_KEY)
    assert.equal(identity.id, SPEC_PEER_ID)
  })
})

describe('peer ids', () => {
  test('an id starts with 12D3KooW and maps back to its public key', () => {
    const identity = generateIdentity()
    assert.ok(identity.id.startsWith('12D3KooW'), identity.id)
    assert.deepEqual(publicKeyFromId(identity.id), identity.publicKey)
    assert.equal(idFromPublicKey(identity.publicKey), identity.id)
  })

  test('the spec vector id maps back to the spec public key', () => {
    assert.deepEqual(Buffer.from(publicKeyFromId(SPEC_PEER_ID)), SPEC_PUBLIC_KEY)
  })

  test('publicKeyFromId rejects strings that are not base58', () => {
    assert.throws(() => publicKeyFromId('12D3KooW0OIl'), rejectsWith('E_INVALID_ARGUMENT'))
    assert.throws(() => publicKeyFromId(''), rejectsWith('E_INVALID_ARGUMENT'))
  })

  test('publicKeyFromId rejects a peer id for another key type', () => {
    // Same layout, but key type 2 (secp256k1) in the protobuf.
    const bytes = Uint8Array.of(0x00, 0x24, 0x08, 0x02, 0x12, 0x20, ...SPEC_PUBLIC_KEY)
    assert.throws(() => publicKeyFromId(base58btc.baseEncode(bytes)), rejectsWith('E_INVALID_ARGUMENT'))
  })

  test('publicKeyFromId rejects a truncated id', () => {
    assert.throws(() => publicKeyFromId(SPEC_PEER_ID.slice(0, -2)), rejectsWith('E_INVALID_ARGUMENT'))
  })

  test('idFromPublicKey rejects a key that is not 32 bytes', () => {
    assert.throws(() => idFromPublicKey(new Uint8Array(31)), rejectsWith('E_INVALID_ARGUMENT'))
  })

  test('a signature does not verify with another identity’s key', () => {
    const data = new TextEncoder().encode('payload')
    const sig = generateIdentity().sign(data)
    assert.equal(verifySignature(generateIdentity().publicKey, data, sig), false)
  })
})
