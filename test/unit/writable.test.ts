import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { randomFillSync } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import { allocAligned, DIRECT_ALIGN, openWritableFile } from '../../src/models/writable.ts'

const dir = mkdtempSync(join(tmpdir(), 'substrate-writable-'))
after(() => rmSync(dir, { recursive: true, force: true }))

/** Bytes of the file held in the page cache (util-linux fincore). */
const cached = (path: string) =>
  Number(
    execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', path], {
      encoding: 'utf8',
    }).trim(),
  )

test('aligned memory is written exactly at ragged positions, its page-aligned middle past the page cache', async () => {
  const path = join(dir, 'direct.bin')
  const expected = randomFillSync(Buffer.alloc(13 << 20))
  const file = await openWritableFile(path, 'w')
  // As the body writer does: each buffer's data starts at its file position's offset in a page.
  const pieces = [
    [0, 5 << 20],
    [5 << 20, (5 << 20) + 1000],
    [(5 << 20) + 1000, (9 << 20) + 77],
    [(9 << 20) + 77, (13 << 20) - 5],
  ] as const
  await Promise.all(
    pieces.map(([from, to]) => {
      const begin = from % DIRECT_ALIGN
      const memory = allocAligned(begin + to - from)
      memory.set(expected.subarray(from, to), begin)
      return file.write(memory.subarray(begin), from)
    }),
  )
  // Memory that is not page-aligned goes through the page cache.
  await file.write(expected.subarray((13 << 20) - 5), (13 << 20) - 5)
  await file.sync()
  await file.close()
  const inCache = cached(path)
  assert.ok(inCache <= 8 * DIRECT_ALIGN, `${inCache} bytes of 13 MiB went through the page cache`)
  assert.ok(readFileSync(path).equals(expected))
})

test('a file reopened to resume keeps its bytes before the resume point', async () => {
  const path = join(dir, 'resume.bin')
  const expected = randomFillSync(Buffer.alloc(3 << 20))
  const first = await openWritableFile(path, 'w')
  await first.write(expected.subarray(0, 50_000), 0)
  await first.close()
  const again = await openWritableFile(path, 'r+')
  const begin = 50_000 % DIRECT_ALIGN
  const memory = allocAligned(begin + expected.length - 50_000)
  memory.set(expected.subarray(50_000), begin)
  await again.write(memory.subarray(begin), 50_000)
  await again.sync()
  await again.close()
  assert.ok(readFileSync(path).equals(expected))
})
