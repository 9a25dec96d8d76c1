// Native routes under /substrate/v1: what the CLI needs beyond Ollama's API (identity,
// hardware, config, importing a local file, stopping a runner) and what the dashboard reads.

import { z } from 'zod'
import type { Config } from '../config/schema.ts'
import { SubstrateError } from '../errors.ts'
import type { HardwareInfo } from '../hardware/detect.ts'
import type { Identity } from '../identity/keys.ts'
import type { ModelStore } from '../models/types.ts'
import type { Runtime } from '../runtime/runtime.ts'
import { gpuAccess, probeSandbox } from '../sandbox/doctor.ts'
import type { SandboxStatus } from '../sandbox/select.ts'
import { VERSION } from '../version.ts'
import { createStreamWriter, readJson, sendJson } from './http.ts'
import type { Route } from './router.ts'

export interface NativeRouteComponents {
  config: Config
  identity: Identity
  models: ModelStore
  runtime: Runtime
  /** the runner sandbox in force, for the doctor */
  sandbox: SandboxStatus
  hardware: () => Promise<HardwareInfo>
  /** describes where each config value came from */
  describeConfig: () => Array<{ key: string; value: unknown; source: string }>
  /** asks the daemon to shut down after answering */
  requestShutdown: () => void
  /** the mesh listen addresses (with /p2p/<id>) for others to bootstrap to; absent when off */
  meshAddrs?: () => string[]
}

const importSchema = z.object({
  path: z.string().min(1),
  name: z.string().min(1),
  stream: z.boolean().optional(),
})
const stopSchema = z.object({ model: z.string().min(1) })

export function nativeRoutes(c: NativeRouteComponents): Route[] {
  return [
    {
      method: 'GET',
      path: '/substrate/v1/status',
      handler: async (_req, res) =>
        sendJson(res, 200, {
          version: VERSION,
          id: c.identity.id,
          pid: process.pid,
          home: c.config.home,
          mesh: c.meshAddrs === undefined ? null : { addrs: c.meshAddrs() },
        }),
    },
    {
      method: 'GET',
      path: '/substrate/v1/id',
      handler: async (_req, res) =>
        sendJson(res, 200, {
          id: c.identity.id,
          publicKey: Buffer.from(c.identity.publicKey).toString('base64'),
        }),
    },
    {
      method: 'GET',
      path: '/substrate/v1/info',
      handler: async (_req, res) => sendJson(res, 200, await c.hardware()),
    },
    {
      method: 'GET',
      path: '/substrate/v1/config',
      handler: async (_req, res) => sendJson(res, 200, { entries: c.describeConfig() }),
    },
    {
      method: 'GET',
      path: '/substrate/v1/runners',
      handler: async (_req, res) => sendJson(res, 200, { runners: c.runtime.ps() }),
    },
    {
      method: 'GET',
      path: '/substrate/v1/doctor',
      // every layer is probed now, in a real sandbox: what this host enforces, not what it should
      handler: async (_req, res) =>
        sendJson(res, 200, {
          backend: c.sandbox,
          layers: await probeSandbox({ active: c.sandbox.active }),
          gpu: gpuAccess(),
        }),
    },
    {
      method: 'POST',
      path: '/substrate/v1/models/import',
      handler: async (req, res) => {
        const body = await readJson(req, importSchema)
        if (body.stream === false) {
          const model = await c.models.importFile(body.path, { name: body.name })
          sendJson(res, 200, { status: 'success', model })
          return
        }
        const out = createStreamWriter(res, 'application/x-ndjson')
        const model = await c.models.importFile(body.path, {
          name: body.name,
          onProgress: (e) => void out.write(`${JSON.stringify(e)}\n`).catch(() => {}),
        })
        out.end(`${JSON.stringify({ status: 'success', model })}\n`)
      },
    },
    {
      method: 'POST',
      path: '/substrate/v1/models/stop',
      handler: async (req, res) => {
        const body = await readJson(req, stopSchema)
        const model = await c.models.resolve(body.model)
        const stopped = await c.runtime.unload(model.digest)
        if (!stopped) throw new SubstrateError('E_NOT_FOUND', `model '${model.name}' is not loaded`)
        sendJson(res, 200, { status: 'stopped' })
      },
    },
    {
      method: 'POST',
      path: '/substrate/v1/shutdown',
      handler: async (_req, res) => {
        sendJson(res, 200, { status: 'shutting down' })
        c.requestShutdown()
      },
    },
  ]
}
