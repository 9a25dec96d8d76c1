// A route table: method + exact path → handler. The API is small and flat; exact matches
// (plus one prefix form for `/v1/models/:id`) keep routing obvious.

import type { IncomingMessage, ServerResponse } from 'node:http'

export interface Route {
  method: 'GET' | 'POST' | 'DELETE' | 'HEAD'
  /** exact path, or a prefix ending in '/*' */
  path: string
  handler: (req: IncomingMessage, res: ServerResponse, url: URL) => Promise<void>
}

export function matchRoute(
  routes: readonly Route[],
  method: string,
  pathname: string,
): Route | 'method' | undefined {
  let pathMatched = false
  for (const r of routes) {
    const hit = r.path.endsWith('/*') ? pathname.startsWith(r.path.slice(0, -1)) : r.path === pathname
    if (!hit) continue
    if (r.method === method || (method === 'HEAD' && r.method === 'GET')) return r
    pathMatched = true
  }
  return pathMatched ? 'method' : undefined
}
