// The whole test suite, as `npm test` and CI run it: type check, lint, dependency cycles,
// then every test file with Node's built-in runner. Extra arguments name test files to
// run alone (and skip the static checks), e.g. `npm test -- test/unit/envelope.test.ts`.
import { spawnSync } from 'node:child_process'
import { globSync } from 'node:fs'

const bin = (name: string) => `node_modules/.bin/${name}`
function step(title: string, cmd: string, args: string[]): void {
  const started = Date.now()
  process.stdout.write(`▶ ${title}\n`)
  const result = spawnSync(cmd, args, { stdio: 'inherit' })
  if (result.status !== 0) {
    process.stdout.write(`✖ ${title} failed (exit ${result.status ?? result.signal})\n`)
    process.exit(result.status ?? 1)
  }
  process.stdout.write(`✔ ${title} (${((Date.now() - started) / 1000).toFixed(1)} s)\n`)
}

const files = process.argv.slice(2)
if (files.length === 0) {
  step('type check (tsc)', bin('tsc'), ['-p', 'tsconfig.json', '--noEmit'])
  step('lint (biome)', bin('biome'), ['check', 'src', 'test', 'bench', 'scripts'])
  step('no circular imports (madge)', bin('madge'), ['--circular', '--extensions', 'ts', 'src'])
  // Before the tests, alone on the CPUs: cached per machine, ~15 min on 2 cores the first time.
  step("llama.cpp's server for this CPU (built once per machine, then cached)", process.execPath, [
    'src/cli/main.ts',
    'engine',
    'build',
  ])
}
const tests = files.length > 0 ? files : globSync('test/**/*.test.ts').sort()
const result = spawnSync(
  process.execPath,
  ['--test', '--test-concurrency=2', '--test-timeout=300000', '--test-reporter=spec', ...tests],
  { stdio: 'inherit' },
)
process.exit(result.status ?? 1)
