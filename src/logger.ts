// A small structured logger: one line per event, JSON when SUBSTRATE_LOG_FORMAT=json.
// Loud warnings (a disabled sandbox, a public bind) go through `warn` so they are never
// filtered by the default level.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error'
const rank: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 }

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void
  info(msg: string, fields?: Record<string, unknown>): void
  warn(msg: string, fields?: Record<string, unknown>): void
  error(msg: string, fields?: Record<string, unknown>): void
  child(scope: string): Logger
}

export interface LoggerInit {
  level?: LogLevel
  json?: boolean
  write?: (line: string) => void
  scope?: string
}

export function createLogger(init: LoggerInit = {}): Logger {
  const level = init.level ?? 'info'
  const json = init.json ?? process.env.SUBSTRATE_LOG_FORMAT === 'json'
  const write = init.write ?? ((line: string) => process.stderr.write(`${line}\n`))
  const scope = init.scope ?? 'substrate'
  const log = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (rank[lvl] < rank[level]) return
    const time = new Date().toISOString()
    if (json) {
      write(JSON.stringify({ time, level: lvl, scope, msg, ...fields }))
      return
    }
    const extra = fields
      ? ` ${Object.entries(fields)
          .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
          .join(' ')}`
      : ''
    write(`${time} ${lvl.toUpperCase().padEnd(5)} [${scope}] ${msg}${extra}`)
  }
  return {
    debug: (m, f) => log('debug', m, f),
    info: (m, f) => log('info', m, f),
    warn: (m, f) => log('warn', m, f),
    error: (m, f) => log('error', m, f),
    child: (s) => createLogger({ ...init, level, json, write, scope: `${scope}:${s}` }),
  }
}

/** A logger that drops everything: for tests and short-lived CLI helpers. */
export const silentLogger: Logger = createLogger({ write: () => {} })
