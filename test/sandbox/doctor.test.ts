// `substrate doctor` must tell the truth about this host: on CI (root, bubblewrap, cgroups)
// every bwrap layer is enforced, Landlock included (the helper built, kernel ABI 7).

import assert from 'node:assert/strict'
import { it } from 'node:test'
import { findTool } from '../../src/sandbox/bwrap.ts'
import { probeSandbox } from '../../src/sandbox/doctor.ts'
import { buildLandlockHelper } from '../../src/sandbox/landlock.ts'

const BWRAP_LAYERS = [
  'bubblewrap',
  'runner-user',
  'user-namespace',
  'pid-namespace',
  'network-namespace',
  'filesystem',
  'capabilities',
  'seccomp',
  'cgroups',
  'rlimits',
  'landlock',
]

it('probes every layer and finds the bwrap stack enforced here', { timeout: 60_000 }, async () => {
  assert.ok(findTool('bwrap'), 'bubblewrap is not installed: run `apt-get install -y bubblewrap` as root')
  const built = buildLandlockHelper()
  assert.ok(built.ok, built.ok ? '' : built.reason)
  const reports = await probeSandbox()
  const byLayer = new Map(reports.map((r) => [r.layer, r]))
  for (const layer of BWRAP_LAYERS) {
    const report = byLayer.get(layer)
    assert.ok(report, `${layer} is reported`)
    assert.equal(report.enforced, true, `${layer}: ${report.detail}`)
    assert.equal(report.fix, undefined, 'no advice for a layer that holds')
  }
  assert.match(
    byLayer.get('landlock')?.detail ?? '',
    /ABI \d+: reading \/etc\/passwd \(bound, not allowed\): EACCES/,
  )
  const gvisor = byLayer.get('gvisor')
  assert.equal(gvisor?.enforced, false, 'runners do not run under gVisor yet')
  assert.match(gvisor?.detail ?? '', /runsc/)
})
