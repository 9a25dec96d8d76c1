// Runs the whole test suite with Node's built-in runner. `npm test` calls this; so does
// .ci/run. Extra arguments are passed through (e.g. a file to run alone).
import { spawnSync } from 'node:child_process'
import { globSync } from 'node:fs'

const args = process.argv.slice(2)
const files = args.length > 0 ? args : globSync('test/**/*.test.ts').sort()
const result = spawnSync(
  process.execPath,
  ['--test', '--test-concurrency=2', '--test-timeout=300000', '--test-reporter=spec', ...files],
  { stdio: 'inherit' },
)
process.exit(result.status ?? 1)
