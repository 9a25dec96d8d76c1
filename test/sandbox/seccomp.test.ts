// The filter's encoding and its decisions, checked by running the program through a small
// classic-BPF interpreter. The escape suite (escape.test.ts) checks the same filter in a
// real kernel.

import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  AF_UNIX,
  AUDIT_ARCH,
  BPF_JEQ_K,
  BPF_JGE_K,
  BPF_JSET_K,
  BPF_LD_W_ABS,
  BPF_RET_K,
  type BpfInstruction,
  buildSeccompFilter,
  DENIED_SYSCALLS,
  EAFNOSUPPORT,
  ENOSYS,
  EPERM,
  encodeSeccompFilter,
  FILTERED_SYSCALLS,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_ERRNO,
  type SeccompArch,
  seccompFilterBytes,
} from '../../src/sandbox/seccomp.ts'

const AF_INET = 2
const AF_NETLINK = 16
const CLONE_NEWUSER = 0x10000000
const CLONE_NEWNET = 0x40000000
// what glibc's pthread_create passes: CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|...
const THREAD_FLAGS = 0x3d0f00
const SIGCHLD = 17

/** Runs the program on a struct seccomp_data built from (arch, nr, args). */
function evaluate(program: BpfInstruction[], arch: number, nr: number, args: number[] = []): number {
  const data = Buffer.alloc(64)
  data.writeInt32LE(nr, 0)
  data.writeUInt32LE(arch, 4)
  args.forEach((a, i) => {
    data.writeUInt32LE(a >>> 0, 16 + 8 * i)
  })
  let acc = 0
  for (let pc = 0; pc < program.length; pc++) {
    const ins = program[pc]
    assert.ok(ins !== undefined)
    if (ins.code === BPF_LD_W_ABS) acc = data.readUInt32LE(ins.k)
    else if (ins.code === BPF_RET_K) return ins.k
    else if (ins.code === BPF_JEQ_K) pc += acc === ins.k >>> 0 ? ins.jt : ins.jf
    else if (ins.code === BPF_JGE_K) pc += acc >= ins.k >>> 0 ? ins.jt : ins.jf
    else if (ins.code === BPF_JSET_K) pc += (acc & ins.k) !== 0 ? ins.jt : ins.jf
    else assert.fail(`unexpected opcode ${ins.code}`)
  }
  return assert.fail('fell off the end of the program')
}

const errno = (e: number) => SECCOMP_RET_ERRNO | e

for (const arch of ['x64', 'arm64'] as const satisfies SeccompArch[]) {
  describe(`seccomp filter (${arch})`, () => {
    const program = buildSeccompFilter(arch)
    const run = (nr: number, args: number[] = []) => evaluate(program, AUDIT_ARCH[arch], nr, args)

    it('has one compare per denied syscall plus a fixed frame', () => {
      const denied = Object.keys(DENIED_SYSCALLS).length
      // ld arch, jeq arch, ld nr, [x32 check], denied..., clone, clone3, socket, ret allow,
      // ld/jset (clone), ld/jeq (socket), 3 errno returns, ret allow
      assert.equal(program.length, 3 + (arch === 'x64' ? 1 : 0) + denied + 3 + 1 + 4 + 4)
    })

    it('denies every listed syscall with EPERM', () => {
      for (const [name, numbers] of Object.entries(DENIED_SYSCALLS)) {
        assert.equal(run(numbers[arch]), errno(EPERM), name)
      }
    })

    it('allows ordinary syscalls (read, write, mmap)', () => {
      const ordinary = arch === 'x64' ? [0, 1, 9] : [63, 64, 222]
      for (const nr of ordinary) assert.equal(run(nr), SECCOMP_RET_ALLOW)
    })

    it('lets clone make threads and processes but not namespaces', () => {
      const clone = FILTERED_SYSCALLS.clone[arch]
      assert.equal(run(clone, [THREAD_FLAGS]), SECCOMP_RET_ALLOW)
      assert.equal(run(clone, [SIGCHLD]), SECCOMP_RET_ALLOW)
      assert.equal(run(clone, [SIGCHLD | CLONE_NEWUSER]), errno(EPERM))
      assert.equal(run(clone, [CLONE_NEWNET]), errno(EPERM))
    })

    it('answers clone3 with ENOSYS so libc falls back to clone', () => {
      assert.equal(run(FILTERED_SYSCALLS.clone3[arch]), errno(ENOSYS))
    })

    it('allows AF_UNIX sockets only', () => {
      const socket = FILTERED_SYSCALLS.socket[arch]
      assert.equal(run(socket, [AF_UNIX]), SECCOMP_RET_ALLOW)
      assert.equal(run(socket, [AF_INET]), errno(EAFNOSUPPORT))
      assert.equal(run(socket, [AF_NETLINK]), errno(EAFNOSUPPORT))
    })

    it('answers calls made under another ABI with ENOSYS', () => {
      const other = arch === 'x64' ? AUDIT_ARCH.arm64 : AUDIT_ARCH.x64
      assert.equal(evaluate(program, other, 0), errno(ENOSYS))
      assert.equal(evaluate(program, 0x40000003 /* i386 */, 0), errno(ENOSYS))
    })

    it('encodes 8 bytes per instruction, little-endian', () => {
      const bytes = encodeSeccompFilter(program)
      assert.equal(bytes.length, program.length * 8)
      assert.equal(bytes.readUInt16LE(0), BPF_LD_W_ABS)
      assert.equal(bytes.readUInt32LE(4), 4) // offsetof(struct seccomp_data, arch)
      assert.equal(bytes.readUInt32LE(12), AUDIT_ARCH[arch])
    })
  })
}

it('closes the x32 back door on x86_64', () => {
  const program = buildSeccompFilter('x64')
  const x32unshare = 0x40000000 | DENIED_SYSCALLS.unshare.x64
  assert.equal(evaluate(program, AUDIT_ARCH.x64, x32unshare), errno(ENOSYS))
})

it('builds the filter for this machine', () => {
  assert.ok(seccompFilterBytes().length > 0)
})
