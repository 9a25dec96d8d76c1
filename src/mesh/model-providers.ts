// Model holders announce themselves in the DHT (DESIGN.md, "Discovery"): a node that holds
// a model provides the model's CID, so a node that wants it, or wants a worker for it, can
// find holders beyond the peers whose capacity gossip it happens to hear.

import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { SubstrateError } from '../errors.ts'
import type { Logger } from '../logger.ts'
import type { MeshNode } from './libp2p-node.ts'

const RAW_CODEC = 0x55
const SHA2_256 = 0x12

/** The CID of a model file: raw bytes, sha2-256, the same digest the model store names it by. */
export function modelCid(digest: string): CID {
  const match = /^sha256:([0-9a-f]{64})$/.exec(digest)
  if (match === null)
    throw new SubstrateError('E_INVALID_ARGUMENT', `not a model digest: ${digest.slice(0, 80)}`)
  return CID.createV1(RAW_CODEC, Digest.create(SHA2_256, Buffer.from(match[1]!, 'hex')))
}

export interface ModelProviders {
  /** Announces that this node holds the model; resolves when the DHT took the record. */
  provide(digest: string, options?: { timeoutMs?: number }): Promise<void>
  /** Stops re-announcing a removed model (records elsewhere expire on their own). */
  withdraw(digest: string): Promise<void>
  /** Peers that announced the model, up to `limit`, within `timeoutMs`. */
  find(digest: string, options?: { timeoutMs?: number; limit?: number }): Promise<string[]>
}

export function createModelProviders(components: { mesh: MeshNode; logger: Logger }): ModelProviders {
  const log = components.logger.child('providers')
  const libp2p = components.mesh.libp2p
  const self = libp2p.peerId.toString()
  return {
    async provide(digest, options = {}) {
      try {
        await libp2p.contentRouting.provide(modelCid(digest), {
          signal: AbortSignal.timeout(options.timeoutMs ?? 30_000),
        })
      } catch (cause) {
        if (cause instanceof SubstrateError) throw cause
        throw new SubstrateError('E_PEER_TIMEOUT', `could not announce model ${digest} in the DHT`, { cause })
      }
      log.debug('providing model', { digest })
    },
    async withdraw(digest) {
      await libp2p.contentRouting.cancelReprovide(modelCid(digest))
    },
    async find(digest, options = {}) {
      const limit = options.limit ?? 20
      const found = new Set<string>()
      const signal = AbortSignal.timeout(options.timeoutMs ?? 10_000)
      try {
        for await (const provider of libp2p.contentRouting.findProviders(modelCid(digest), { signal })) {
          const id = provider.id.toString()
          if (id !== self) found.add(id)
          if (found.size >= limit) break
        }
      } catch (err) {
        // A deadline with some providers found is a partial answer, not a failure.
        if (!signal.aborted) throw err
      }
      return [...found]
    },
  }
}
