// One Helia node (IPFS in JS) on loopback with the same transport stack as a Substrate node
// (TCP, Noise, Yamux, identify) and bitswap, for the side-by-side in compare.ts.
//
//   serve FILE DIR: adds FILE as UnixFS (1 MiB raw leaves, CIDv1) to a blockstore in DIR;
//                   prints {cid, addr, id, addMs}, then serves until stdin closes.
//   fetch CID ADDR DIR: dials ADDR and reads the whole file over bitswap into DIR's
//                   blockstore; prints {bytes, ms}.

import { createReadStream } from 'node:fs'
import { noise } from '@chainsafe/libp2p-noise'
import { withBitswap } from '@helia/bitswap'
import { withLibp2pLight } from '@helia/libp2p'
import { unixfs } from '@helia/unixfs'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { yamux } from '@libp2p/yamux'
import { multiaddr } from '@multiformats/multiaddr'
import { FsBlockstore } from 'blockstore-fs'
import { MemoryDatastore } from 'datastore-core'
import { createHeliaLight } from 'helia'
import { CID } from 'multiformats/cid'

const [mode, a, b, c] = process.argv.slice(2)
const dir = mode === 'serve' ? b! : c!
const node = withBitswap(
  withLibp2pLight(createHeliaLight({ blockstore: new FsBlockstore(dir), datastore: new MemoryDatastore() }), {
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify() },
  }),
)
await node.start()
const fs = unixfs(node)

if (mode === 'serve') {
  const started = performance.now()
  const cid = await fs.addByteStream(createReadStream(a!, { highWaterMark: 1 << 20 }), {
    rawLeaves: true,
    cidVersion: 1,
  })
  const addMs = performance.now() - started
  const addr = node.libp2p.getMultiaddrs()[0]!.toString()
  process.stdout.write(
    `${JSON.stringify({ cid: cid.toString(), addr, id: node.libp2p.peerId.toString(), addMs })}\n`,
  )
  process.stdin.resume()
  process.stdin.on('end', () => void node.stop().then(() => process.exit(0)))
} else {
  await node.libp2p.dial(multiaddr(b!))
  const started = performance.now()
  let bytes = 0
  for await (const piece of fs.cat(CID.parse(a!))) bytes += piece.byteLength
  process.stdout.write(`${JSON.stringify({ bytes, ms: performance.now() - started })}\n`)
  await node.stop()
  process.exit(0)
}
