// Installs the system packages the node needs and npm cannot provide: bubblewrap (the
// runner sandbox), with --build-tools what building llama-server needs, and compiles the sandbox's Landlock helper (src/sandbox/landlock-exec.c)
// when a C compiler is there. Runs before the demo and the tests. As root (or with passwordless sudo)
// on a Debian/Ubuntu machine it installs them with apt; otherwise it prints the one command
// to run and exits non-zero only when --require is given.
import { spawnSync } from 'node:child_process'
import { chmodSync, statSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { buildLandlockHelper } from '../src/sandbox/landlock.ts'

// Sandboxed runners run as an unprivileged user that must reach the runtime (node, the
// runner sources, node_modules) through every directory above the project. A checkout in a
// 0700 directory (mktemp -d) would lock it out, so as root add the traverse bit (o+x) —
// never read — to each directory above the project that lacks it, and say so.
function makeProjectTraversable(): void {
  if (process.getuid?.() !== 0) return
  let dir = resolve(dirname(fileURLToPath(import.meta.url)), '..')
  for (; dir !== dirname(dir); dir = dirname(dir)) {
    const mode = statSync(dir).mode
    if ((mode & 0o001) === 0) {
      chmodSync(dir, (mode & 0o7777) | 0o001)
      console.log(`• ${dir}: added o+x so the sandboxed runner user can reach the runtime`)
    }
  }
}
makeProjectTraversable()

// Soft: without the helper runners still start sandboxed, without Landlock (doctor says so).
const landlock = buildLandlockHelper()
if (!landlock.ok)
  console.log(`• Landlock helper not built, runners will run without Landlock: ${landlock.reason}`)
else if (landlock.built) console.log(`• built the Landlock helper: ${landlock.path}`)

const packages = [{ binary: 'bwrap', pkg: 'bubblewrap' }]
// The test suite builds llama.cpp's server once per machine (src/runtime/engine.ts).
if (process.argv.includes('--build-tools')) {
  packages.push(
    { binary: 'git', pkg: 'git' },
    { binary: 'cmake', pkg: 'cmake' },
    { binary: 'make', pkg: 'make' },
    { binary: 'c++', pkg: 'g++' },
  )
}
const has = (bin: string) => spawnSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' }).status === 0
const missing = packages.filter((p) => !has(p.binary))
if (missing.length === 0) process.exit(0)

const names = missing.map((p) => p.pkg).join(' ')
const isRoot = process.getuid?.() === 0
const canSudo = !isRoot && has('sudo') && spawnSync('sudo', ['-n', 'true'], { stdio: 'ignore' }).status === 0
if (has('apt-get') && (isRoot || canSudo)) {
  console.log(`• installing ${names} with apt-get`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  const apt = (...args: string[]) => {
    const argv = ['apt-get', '-o', 'DPkg::Lock::Timeout=120', ...args]
    const [cmd, ...rest] = isRoot ? argv : ['sudo', '-n', ...argv]
    return spawnSync(cmd!, rest, { stdio: 'inherit', env }).status === 0
  }
  const install = () => apt('install', '-y', '--no-install-recommends', ...missing.map((p) => p.pkg))
  if ((install() || (apt('update') && install())) && missing.every((p) => has(p.binary))) process.exit(0)
}
console.error(
  `The runner sandbox (and with --build-tools the engine build) needs: ${names}. Install it with:\n  sudo apt-get install -y ${names}`,
)
process.exit(process.argv.includes('--require') ? 1 : 0)
