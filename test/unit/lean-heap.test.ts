// leanStartup: while a daemon starts, V8 compiles nothing above the interpreter, except in
// work it runs at full speed (a large ledger's fold); once it is ready every tier is back, so
// hot request code is optimized as usual. Checked in a child
// process with V8's own view of a function (%GetOptimizationStatus, --allow-natives-syntax).

import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { test } from 'node:test'
import { pathToFileURL } from 'node:url'

const leanHeap = pathToFileURL(new URL('../../src/cli/lean-heap.ts', import.meta.url).pathname).href

// V8's OptimizationStatus bits (src/runtime/runtime.h)
const script = `
import { leanStartup } from ${JSON.stringify(leanHeap)}
const compiled = (f) => (%GetOptimizationStatus(f) & ((1 << 4) | (1 << 5) | (1 << 6) | (1 << 15))) !== 0
// a new function each time (closures of one literal share compiled code)
let made = 0
const make = () => new Function('x', \`/* \${++made} */ let s = 0; for (let i = 0; i < 50; i++) s += (x * i) % 7; return s\`)
async function warm(f, ms) {
  // hot enough for every tier (without leanStartup, the first round is); bounded in work and time
  const until = Date.now() + ms
  for (let round = 0; round < 200 && Date.now() < until; round++) {
    for (let i = 0; i < 20_000; i++) f(i)
    if (compiled(f)) return true
    await new Promise((r) => setTimeout(r, 5))
  }
  return false
}
const lean = leanStartup()
const during = make()
const duringCompiled = await warm(during, 1000)
// heavy start-up work (a large ledger's fold) compiles as usual, and lean start-up resumes after
const heavyCompiled = lean.fullSpeed(() => {
  const f = make()
  for (let round = 0; round < 50 && !compiled(f); round++) for (let i = 0; i < 20_000; i++) f(i)
  return compiled(f)
})
const afterHeavy = make()
const afterHeavyCompiled = await warm(afterHeavy, 1000)
lean.ready()
const after = make()
const afterCompiled = await warm(after, 10_000)
console.log(JSON.stringify({ duringCompiled, heavyCompiled, afterHeavyCompiled, afterCompiled }))
process.exit(0)
`

test('leanStartup keeps start-up code on the interpreter, compiles heavy work run at full speed, and brings every tier back when ready', () => {
  const res = spawnSync(process.execPath, ['--allow-natives-syntax', '--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 60_000,
  })
  assert.equal(res.status, 0, res.stderr)
  assert.deepEqual(JSON.parse(res.stdout.trim()), {
    duringCompiled: false,
    heavyCompiled: true,
    afterHeavyCompiled: false,
    afterCompiled: true,
  })
})
