// All routes of the daemon's API, in one list.

import type { Route } from './router.ts'
import { type NativeRouteComponents, nativeRoutes } from './routes-native.ts'
import { ollamaRoutes } from './routes-ollama.ts'
import { openaiRoutes } from './routes-openai.ts'

export function routesFor(c: NativeRouteComponents): Route[] {
  return [...ollamaRoutes(c), ...openaiRoutes(c), ...nativeRoutes(c)]
}
