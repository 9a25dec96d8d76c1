// `substrate doctor`: what isolation this host really gives model runners. The daemon
// probes every layer in a real sandbox (GET /substrate/v1/doctor); this only renders it.

import type { DoctorReport } from '../api/client.ts'
import { type Command, table, writeJson } from './render.ts'

function backendLine(report: DoctorReport): string {
  const b = report.backend
  const as = b.runnerUser === undefined ? '' : `, as ${b.runnerUser}`
  if (b.enforced) return `Runners start in: ${b.active}${as} (sandbox.backend = ${b.requested})\n`
  return (
    `Runners start in: NO SANDBOX (sandbox.backend = ${b.requested}): ${b.reason ?? 'unknown reason'}\n` +
    'This node serves local requests only and refuses mesh jobs until the sandbox works.\n'
  )
}

const doctor: Command = {
  usage: 'substrate doctor',
  description:
    'Shows which isolation layers this host really enforces for model runners, each probed by\n' +
    'starting a throwaway process in the same sandbox runners get and looking at it from inside and\n' +
    'outside: namespaces, filesystem, capabilities, seccomp, cgroups, rlimits, the runner account,\n' +
    'Landlock and gVisor. A layer that does not hold says how to fix it. Runners read untrusted model\n' +
    "files and, on the mesh, strangers' prompts: a node whose sandbox does not work serves local\n" +
    'requests only. See SECURITY.md for what each layer stops.',
  examples: ['substrate doctor', "substrate doctor --json | jq '.layers[] | select(.enforced | not)'"],
  flags: {},
  args: { min: 0, max: 0 },
  async run(ctx) {
    const report = await (await ctx.daemon()).doctor()
    if (ctx.json) return writeJson(ctx.io.stdout, report)
    ctx.io.stdout.write(backendLine(report))
    ctx.io.stdout.write('\n')
    ctx.io.stdout.write(
      table(
        ['LAYER', 'ENFORCED', 'DETAIL', 'HOW TO FIX'],
        report.layers.map((l) => [l.layer, l.enforced ? 'yes' : 'NO', l.detail, l.fix ?? '']),
      ),
    )
    ctx.io.stdout.write(`\nGPU: ${report.gpu.detail}\n`)
  },
}

export const commands: Record<string, Command> = { doctor }
