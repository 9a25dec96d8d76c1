// A model holder in its own process, for peer-transfer tests and benchmarks: serves one file
// over `/substrate/model-chunks/2`, honestly or as the hostile peer the test asks for. Prints
// `{id, addr, digest, tcpPort?}` as one JSON line, serves until stdin closes (then prints
// `{servedChunks}` and exits) or it is killed.
//
//   argv[2]: JSON {file, mode?: 'honest' | 'corrupt' | 'stall' | 'lie', lieAbout?: digest,
//                  bytesPerSecond?: number, chunkSize?: number,
//                  bootstrap?: multiaddr (joins that mesh and provides the file's digest in its DHT),
//                  baselines?: true (benchmarks: also stream the whole file over plain TCP and
//                              over a bare libp2p stream, the ceilings the protocol is compared with)}

import { createReadStream } from 'node:fs'
import { createServer } from 'node:net'
import { generateIdentity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import { createMeshNode } from '../../src/mesh/libp2p-node.ts'
import { createModelProviders } from '../../src/mesh/model-providers.ts'
import { createModelTransfer } from '../../src/mesh/model-transfer.ts'
import { fileChunkSource, type HolderMode, RAW_FILE_PROTOCOL } from './chunk-source.ts'

const config = JSON.parse(process.argv[2] ?? '{}') as {
  file: string
  mode?: HolderMode
  lieAbout?: string
  bytesPerSecond?: number
  chunkSize?: number
  bootstrap?: string
  baselines?: boolean
}
const identity = generateIdentity()
const mesh = await createMeshNode({ identity, logger: silentLogger })
const source = await fileChunkSource(config.file, config)
const transfer = createModelTransfer(
  { mesh, logger: silentLogger, source },
  config.bytesPerSecond === undefined ? {} : { uploadBytesPerSecond: config.bytesPerSecond },
)
await mesh.start()
await transfer.start()
if (config.bootstrap !== undefined) {
  await mesh.dial(config.bootstrap, 10_000)
  await createModelProviders({ mesh, logger: silentLogger }).provide(source.digest)
}
let tcpPort: number | undefined
if (config.baselines === true) {
  const server = createServer((socket) => {
    createReadStream(config.file, { highWaterMark: 1 << 20 }).pipe(socket)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  tcpPort = (server.address() as { port: number }).port
  await mesh.libp2p.handle(RAW_FILE_PROTOCOL, async (stream) => {
    for await (const chunk of createReadStream(config.file, { highWaterMark: 256 * 1024 })) {
      if (!stream.send(chunk as Buffer)) await stream.onDrain()
    }
    await stream.close()
  })
}
process.stdout.write(
  `${JSON.stringify({ id: identity.id, addr: mesh.multiaddrs()[0], digest: source.digest, tcpPort })}\n`,
)
process.stdin.resume()
process.stdin.on('end', () => {
  process.stdout.write(`${JSON.stringify({ servedChunks: source.servedChunks() })}\n`)
  void transfer
    .stop()
    .then(() => mesh.stop())
    .then(() => process.exit(0))
})
