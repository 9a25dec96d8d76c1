// All routes of the daemon's API, in one list.

import type { InferenceComponents } from './inference.ts'
import type { Route } from './router.ts'
import { type LedgerRouteComponents, ledgerRoutes } from './routes-ledger.ts'
import { type MeshRouteComponents, meshRoutes } from './routes-mesh.ts'
import { type NativeRouteComponents, nativeRoutes } from './routes-native.ts'
import { ollamaRoutes } from './routes-ollama.ts'
import { openaiRoutes } from './routes-openai.ts'

export type RouteComponents = NativeRouteComponents &
  InferenceComponents &
  Omit<MeshRouteComponents, 'mesh'> & { meshInfo?: MeshRouteComponents['mesh'] } & {
    ledger: LedgerRouteComponents
  }

export function routesFor(c: RouteComponents): Route[] {
  const mesh = meshRoutes({ ...c, mesh: c.meshInfo })
  return [...ollamaRoutes(c), ...openaiRoutes(c), ...nativeRoutes(c), ...mesh, ...ledgerRoutes(c.ledger)]
}
