// Peers as a pull source: `peers:NAME` or `peers:sha256:HEX` (what `substrate pull
// --from-peers-only` sends) resolves to a plan whose bytes come only from peers, and the
// `peers` fetcher runs such a plan — or any plan whose sha256 peers hold — through the
// peer puller. A name is the peers' claim from their capacity records; the digest it maps
// to is what every byte is then checked against.

import { SubstrateError } from '../errors.ts'
import type { BlobFetch, BlobFetcher, ModelSource, PlannedBlob } from '../models/sources/plan.ts'
import { normalizeModelName } from '../models/store.ts'
import type { PeerPuller } from './peer-pull.ts'

export const PEERS_PREFIX = 'peers:'

export interface PeersFetch extends BlobFetch {
  kind: 'peers'
  /** "sha256:<64 hex>" */
  digest: string
}

const DIGEST = /^(?:sha256:)?([0-9a-f]{64})$/

/** `peers:` references, resolved against what peers say they hold. */
export function createPeersSource(components: {
  findRemoteModel(nameOrDigest: string): { name: string; digest: string } | undefined
}): ModelSource {
  return {
    id: 'peers',
    matches: (ref) => ref.startsWith(PEERS_PREFIX),
    async plan(ref) {
      const wanted = ref.slice(PEERS_PREFIX.length).trim()
      const hex = DIGEST.exec(wanted.toLowerCase())?.[1]
      if (hex !== undefined) {
        const digest = `sha256:${hex}`
        // A digest needs no capacity record: the DHT may still know holders.
        const named = components.findRemoteModel(digest)
        return {
          source: `${PEERS_PREFIX}${digest}`,
          name: named?.name ?? `sha256-${hex.slice(0, 12)}`,
          model: { fetch: peersFetch(digest), sha256: hex, label: digest },
        }
      }
      const name = normalizeModelName(wanted)
      const remote = components.findRemoteModel(name)
      if (remote === undefined) {
        throw new SubstrateError(
          'E_MODEL_NOT_FOUND',
          `no peer offers a model named ${name} (source: peers)`,
          {
            hint: "see what peers offer with 'substrate peers', or pull by digest: peers:sha256:HEX",
          },
        )
      }
      return {
        source: `${PEERS_PREFIX}${name}`,
        name,
        model: {
          fetch: peersFetch(remote.digest),
          sha256: remote.digest.slice('sha256:'.length),
          label: name,
        },
      }
    },
  }
}

export const peersFetch = (digest: string): PeersFetch => ({ kind: 'peers', digest })

const isPeersFetch = (fetch: BlobFetch): fetch is PeersFetch =>
  fetch.kind === 'peers' && typeof (fetch as Partial<PeersFetch>).digest === 'string'

/** Runs `peers` plans; `puller` is looked up per pull because the mesh starts after the store. */
export function createPeersFetcher(puller: () => PeerPuller | undefined): BlobFetcher {
  return async (blob: PlannedBlob, ctx) => {
    const p = puller()
    if (p === undefined) {
      throw new SubstrateError('E_MODEL_NOT_FOUND', 'cannot pull from peers: the mesh is off on this node', {
        hint: 'enable it in the config (mesh.enabled = true)',
      })
    }
    if (!isPeersFetch(blob.fetch)) throw new SubstrateError('E_INTERNAL', 'not a peers plan')
    const fetched = await p.fetch(blob.fetch.digest, {
      tmpDir: ctx.tmpDir,
      openWritable: ctx.openWritable,
      status: ctx.status,
      admit: (size) => ctx.admit(size),
      ...(ctx.onProgress === undefined ? {} : { onProgress: ctx.onProgress }),
      ...(ctx.signal === undefined ? {} : { signal: ctx.signal }),
    })
    return fetched
  }
}
