// A seccomp-bpf deny-list the project generates itself, so there is no native dependency
// (libseccomp) to build: classic BPF, encoded as the raw `struct sock_filter` array that
// bwrap's `--seccomp FD` reads. Denied calls fail with an errno, never kill: a runner that
// trips the filter gets a clear error in its log instead of vanishing.
//
// Bwrap already drops every capability and forbids new user namespaces; this filter is the
// second wall behind that one, and it also closes what capabilities do not cover (sockets
// of any family but AF_UNIX inside the sandbox's own network namespace, io_uring, ptrace of
// a sibling in the same sandbox).

export type SeccompArch = 'x64' | 'arm64'

/** Syscalls that only fail with EPERM here. Numbers from the kernel's unistd tables. */
export const DENIED_SYSCALLS = {
  unshare: { x64: 272, arm64: 97 },
  setns: { x64: 308, arm64: 268 },
  mount: { x64: 165, arm64: 40 },
  umount2: { x64: 166, arm64: 39 },
  pivot_root: { x64: 155, arm64: 41 },
  chroot: { x64: 161, arm64: 51 },
  // the new mount API reaches the same places as mount(2)
  open_tree: { x64: 428, arm64: 428 },
  move_mount: { x64: 429, arm64: 429 },
  fsopen: { x64: 430, arm64: 430 },
  fsconfig: { x64: 431, arm64: 431 },
  fsmount: { x64: 432, arm64: 432 },
  fspick: { x64: 433, arm64: 433 },
  mount_setattr: { x64: 442, arm64: 442 },
  ptrace: { x64: 101, arm64: 117 },
  process_vm_readv: { x64: 310, arm64: 270 },
  process_vm_writev: { x64: 311, arm64: 271 },
  pidfd_getfd: { x64: 438, arm64: 438 },
  kcmp: { x64: 312, arm64: 272 },
  bpf: { x64: 321, arm64: 280 },
  perf_event_open: { x64: 298, arm64: 241 },
  userfaultfd: { x64: 323, arm64: 282 },
  keyctl: { x64: 250, arm64: 219 },
  add_key: { x64: 248, arm64: 217 },
  request_key: { x64: 249, arm64: 218 },
  kexec_load: { x64: 246, arm64: 104 },
  kexec_file_load: { x64: 320, arm64: 294 },
  init_module: { x64: 175, arm64: 105 },
  finit_module: { x64: 313, arm64: 273 },
  delete_module: { x64: 176, arm64: 106 },
  open_by_handle_at: { x64: 304, arm64: 265 },
  reboot: { x64: 169, arm64: 142 },
  swapon: { x64: 167, arm64: 224 },
  swapoff: { x64: 168, arm64: 225 },
  acct: { x64: 163, arm64: 89 },
  // io_uring ops (IORING_OP_SOCKET, ...) do not pass through seccomp: deny the ring itself;
  // libuv falls back to its thread pool when io_uring_setup fails.
  io_uring_setup: { x64: 425, arm64: 425 },
  io_uring_enter: { x64: 426, arm64: 426 },
  io_uring_register: { x64: 427, arm64: 427 },
} as const satisfies Record<string, Record<SeccompArch, number>>

/** Syscalls with an argument check or a different errno. */
export const FILTERED_SYSCALLS = {
  clone: { x64: 56, arm64: 220 },
  clone3: { x64: 435, arm64: 435 },
  socket: { x64: 41, arm64: 198 },
} as const satisfies Record<string, Record<SeccompArch, number>>

export const AUDIT_ARCH = { x64: 0xc000003e, arm64: 0xc00000b7 } as const satisfies Record<
  SeccompArch,
  number
>

export const EPERM = 1
export const ENOSYS = 38
export const EAFNOSUPPORT = 97
export const AF_UNIX = 1
/** CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (NEWTIME is clone3-only). */
export const CLONE_NAMESPACE_FLAGS = 0x7e020000
/** x32 syscalls share AUDIT_ARCH_X86_64 but carry this bit: without a check they bypass the table. */
export const X32_SYSCALL_BIT = 0x40000000

export const SECCOMP_RET_ALLOW = 0x7fff0000
export const SECCOMP_RET_ERRNO = 0x00050000

// struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
const OFFSET_NR = 0
const OFFSET_ARCH = 4
const offsetArgLow = (i: number) => 16 + 8 * i // little-endian: the low word comes first

// classic BPF opcodes
export const BPF_LD_W_ABS = 0x20
export const BPF_JEQ_K = 0x15
export const BPF_JGE_K = 0x35
export const BPF_JSET_K = 0x45
export const BPF_RET_K = 0x06

export interface BpfInstruction {
  code: number
  jt: number
  jf: number
  k: number
}

type Label = 'allow' | 'eperm' | 'enosys' | 'eafnosupport' | 'clone' | 'socket'
interface Pending {
  code: number
  k: number
  jt?: Label
  jf?: Label
  label?: Label
}

/** Builds the filter for one architecture; a call made under any other ABI gets ENOSYS. */
export function buildSeccompFilter(arch: SeccompArch): BpfInstruction[] {
  const ld = (offset: number): Pending => ({ code: BPF_LD_W_ABS, k: offset })
  const jeq = (k: number, jt?: Label, jf?: Label): Pending => ({ code: BPF_JEQ_K, k, jt, jf })
  const ret = (k: number, label?: Label): Pending => ({ code: BPF_RET_K, k, label })
  const p: Pending[] = [ld(OFFSET_ARCH), jeq(AUDIT_ARCH[arch], undefined, 'enosys'), ld(OFFSET_NR)]
  if (arch === 'x64') p.push({ code: BPF_JGE_K, k: X32_SYSCALL_BIT, jt: 'enosys' })
  for (const numbers of Object.values(DENIED_SYSCALLS)) p.push(jeq(numbers[arch], 'eperm'))
  p.push(jeq(FILTERED_SYSCALLS.clone[arch], 'clone'))
  // ENOSYS, not EPERM: glibc then falls back to clone(2), whose flags this filter can read
  // (clone3 passes them behind a pointer, out of BPF's reach).
  p.push(jeq(FILTERED_SYSCALLS.clone3[arch], 'enosys'))
  p.push(jeq(FILTERED_SYSCALLS.socket[arch], 'socket'))
  p.push(ret(SECCOMP_RET_ALLOW))
  p.push({ ...ld(offsetArgLow(0)), label: 'clone' })
  p.push({ code: BPF_JSET_K, k: CLONE_NAMESPACE_FLAGS, jt: 'eperm', jf: 'allow' })
  p.push({ ...ld(offsetArgLow(0)), label: 'socket' })
  p.push(jeq(AF_UNIX, 'allow', 'eafnosupport'))
  p.push(ret(SECCOMP_RET_ERRNO | EPERM, 'eperm'))
  p.push(ret(SECCOMP_RET_ERRNO | ENOSYS, 'enosys'))
  p.push(ret(SECCOMP_RET_ERRNO | EAFNOSUPPORT, 'eafnosupport'))
  p.push(ret(SECCOMP_RET_ALLOW, 'allow')) // a second copy: BPF cannot jump backwards
  return resolveJumps(p)
}

function resolveJumps(pending: Pending[]): BpfInstruction[] {
  const at = new Map<Label, number>()
  pending.forEach((ins, i) => {
    if (ins.label !== undefined) at.set(ins.label, i)
  })
  const offset = (from: number, to: Label | undefined): number => {
    if (to === undefined) return 0
    const target = at.get(to)
    // classic BPF only jumps forward, by at most 255 instructions
    if (target === undefined || target <= from || target - from - 1 > 255) {
      throw new Error(`seccomp: cannot jump from ${from} to ${to}`)
    }
    return target - from - 1
  }
  return pending.map((ins, i) => ({ code: ins.code, jt: offset(i, ins.jt), jf: offset(i, ins.jf), k: ins.k }))
}

/** The bytes bwrap's `--seccomp FD` reads: struct sock_filter[] in host (little-endian) order. */
export function encodeSeccompFilter(program: BpfInstruction[]): Buffer {
  const out = Buffer.alloc(program.length * 8)
  program.forEach((ins, i) => {
    out.writeUInt16LE(ins.code, i * 8)
    out.writeUInt8(ins.jt, i * 8 + 2)
    out.writeUInt8(ins.jf, i * 8 + 3)
    out.writeUInt32LE(ins.k >>> 0, i * 8 + 4)
  })
  return out
}

export function hostSeccompArch(): SeccompArch {
  if (process.arch === 'x64' || process.arch === 'arm64') return process.arch
  throw new Error(`seccomp: no syscall table for ${process.arch}`)
}

/** The encoded filter for this machine. */
export function seccompFilterBytes(arch: SeccompArch = hostSeccompArch()): Buffer {
  return encodeSeccompFilter(buildSeccompFilter(arch))
}
