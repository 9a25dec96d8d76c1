// `substrate doctor` must tell the truth about this host: on CI (root, bubblewrap, cgroups)
// every bwrap layer is enforced, and Landlock is reported as not applied.

import assert from 'node:assert/strict'
import { it } from 'node:test'
import { findTool } from '../../src/sandbox/bwrap.ts'
import { probeSandbox } from '../../src/sandbox/doctor.ts'

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
]

it('probes every layer and finds the bwrap stack enforced here', { timeout: 60_000 }, async () => {
  assert.ok(findTool('bwrap'), 'bubblewrap is not installed: run `apt-get install -y bubblewrap` as root')
  const reports = await probeSandbox()
  const byLayer = new Map(reports.map((r) => [r.layer, r]))
  for (const layer of BWRAP_LAYERS) {
    const report = byLayer.get(layer)
    assert.ok(report, `${layer} is reported`)
    assert.equal(report.enforced, true, `${layer}: ${report.detail}`)
    assert.equal(report.fix, undefined, 'no advice for a layer that holds')
  }
  const landlock = byLayer.get('landlock')
  assert.equal(landlock?.enforced, false, 'Landlock is not applied yet and must not be claimed')
  assert.ok(landlock?.fix)
  const gvisor = byLayer.get('gvisor')
  assert.equal(gvisor?.enforced, false, 'runners do not run under gVisor yet')
  assert.match(gvisor?.detail ?? '', /runsc/)
})
