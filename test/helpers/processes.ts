// Looking at a daemon's runner processes from the outside, through /proc.

import { readFileSync } from 'node:fs'

/** The pids below `pid`, depth first: the runner is a few execs and one fork under its pid. */
export function descendants(pid: number): number[] {
  let children: number[] = []
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .split(' ')
      .filter(Boolean)
      .map(Number)
  } catch {}
  return children.flatMap((c) => [c, ...descendants(c)])
}

export const argvOf = (pid: number): string[] => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')

export const uidOf = (pid: number): number =>
  Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? Number.NaN)
