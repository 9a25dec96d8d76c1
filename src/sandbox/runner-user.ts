// The unprivileged account runners run as when the daemon is root. Bubblewrap started by
// root keeps root's view of the filesystem (measured: such a sandbox read /etc/shadow), so
// namespaces alone do not make a root daemon's runners safe: they need a different uid.
// There is deliberately no option to run runners as root.

import { execFile } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { SubstrateError } from '../errors.ts'

const run = promisify(execFile)

export const RUNNER_USER_NAME = 'substrate-runner'

export interface RunnerUser {
  name: string
  uid: number
  gid: number
}

/** Looks the account up through NSS (getent), so LDAP/sssd accounts count too. */
export async function findRunnerUser(name: string = RUNNER_USER_NAME): Promise<RunnerUser | undefined> {
  let stdout: string
  try {
    ;({ stdout } = await run('getent', ['passwd', name]))
  } catch {
    return undefined // getent exits 2 when the name is unknown
  }
  const fields = stdout.trim().split(':')
  const uid = Number(fields[2])
  const gid = Number(fields[3])
  if (!Number.isInteger(uid) || !Number.isInteger(gid)) return undefined
  if (uid === 0 || gid === 0) {
    throw new SubstrateError('E_SANDBOX_UNAVAILABLE', `the runner account ${name} has uid or gid 0`, {
      hint: `give ${name} its own unprivileged uid and gid`,
    })
  }
  return { name, uid, gid }
}

/** Finds the runner account, creating it (a system account without home or shell) as root. */
export async function ensureRunnerUser(name: string = RUNNER_USER_NAME): Promise<RunnerUser> {
  const found = await findRunnerUser(name)
  if (found !== undefined) return found
  if (process.getuid?.() !== 0) {
    throw new SubstrateError('E_SANDBOX_UNAVAILABLE', `the runner account ${name} does not exist`, {
      hint: `as root: useradd --system --no-create-home --shell /usr/sbin/nologin ${name}`,
    })
  }
  try {
    await run('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', name])
  } catch (err) {
    // another daemon (or test file) may be creating it right now: useradd then fails on
    // the existing name or on the /etc/passwd lock; give that one a moment to finish
    for (let attempt = 0; attempt < 10; attempt++) {
      const again = await findRunnerUser(name)
      if (again !== undefined) return again
      await sleep(100)
    }
    throw new SubstrateError('E_SANDBOX_UNAVAILABLE', `could not create the runner account ${name}`, {
      cause: err,
      hint: 'install the passwd package (useradd) or create the account by hand',
    })
  }
  const created = await findRunnerUser(name)
  if (created === undefined) {
    throw new SubstrateError('E_SANDBOX_UNAVAILABLE', `useradd ran but ${name} is not visible`)
  }
  return created
}

/**
 * The account runners use: the dedicated one when this process is root, none (the daemon's
 * own unprivileged uid) otherwise.
 */
export async function runnerUserForThisProcess(
  name: string = RUNNER_USER_NAME,
): Promise<RunnerUser | undefined> {
  return process.getuid?.() === 0 ? ensureRunnerUser(name) : undefined
}
