// Review r53: the native addon's setCloseOnExec and src/close-on-exec.ts, on the descriptors of
// real classic-level databases (LevelDB opens them without close-on-exec).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { openSync, closeSync } from 'node:fs'
import { mkdtemp, realpath, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import { ClassicLevel } from 'classic-level'
import { closeOnExecStatus, closeOnExecWhere, descriptorsWhere, hasCloseOnExec, underDirectory } from '../src/close-on-exec.js'
import { nativeAead, nativeAeadStatus } from '../src/crypto/native-aead.js'
import { TS_LOADER } from './support/child-script.js'

const exec = promisify(execFile)

const noAddon = nativeAead() === undefined ? `the native addon is not in use: ${nativeAeadStatus().reason}` : undefined
const notLinux = process.platform === 'linux' ? undefined : 'descriptors are listed through /proc/self/fd (Linux)'
const skip = notLinux ?? noAddon
if (skip !== undefined) process.stdout.write(`# SKIP r53 close-on-exec tests: ${skip}\n`)

let root: string
before(async () => { root = await realpath(await mkdtemp(join(tmpdir(), 'r53-cloexec-'))) })
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('r53: the addon\'s setCloseOnExec and src/close-on-exec.ts', { skip }, () => {
  it('setCloseOnExec sets FD_CLOEXEC and says whether it was set; bad descriptors are refused', async () => {
    const addon = nativeAead()
    assert.ok(addon !== undefined)
    assert.deepEqual(closeOnExecStatus(), { available: true, reason: 'the native addon sets it' })
    // LevelDB's LOCK: opened without O_CLOEXEC (the reason for all this), so a descriptor without it.
    const location = join(root, 'unit-db')
    const db = new ClassicLevel(location)
    await db.open()
    try {
      const lock = [...descriptorsWhere((target) => target === join(location, 'LOCK')).keys()]
      assert.equal(lock.length, 1, 'LevelDB holds its LOCK open')
      const fd = lock[0] as number
      assert.equal(hasCloseOnExec(fd), false)
      assert.equal(addon.setCloseOnExec(fd), false, 'it was not set before')
      assert.equal(hasCloseOnExec(fd), true)
      assert.equal(addon.setCloseOnExec(fd), true, 'now it was')
    } finally {
      await db.close()
    }
    for (const bad of [-1, 1.5, 2 ** 31, Number.NaN]) assert.throws(() => addon.setCloseOnExec(bad), RangeError, String(bad))
    assert.throws(() => addon.setCloseOnExec('3' as unknown as number), TypeError)
    const closed = openSync('/dev/null', 'r')
    closeSync(closed)
    assert.throws(() => addon.setCloseOnExec(closed), (err: Error & { code?: string }) => err.code === 'EBADF')
  })

  it('closeOnExecWhere marks only the matching descriptors that lack it, and not those it is told to leave', async () => {
    const first = join(root, 'mark-a')
    const second = join(root, 'mark-b')
    const a = new ClassicLevel(first)
    const b = new ClassicLevel(second)
    await a.open()
    await b.open()
    try {
      const inB = descriptorsWhere(underDirectory(second))
      const leftLock = [...inB].find(([, target]) => target.endsWith('/LOCK'))?.[0] as number
      const marked = closeOnExecWhere(underDirectory(second), new Set([leftLock]))
      assert.deepEqual(new Set(marked), new Set([...inB.keys()].filter((fd) => fd !== leftLock)))
      assert.equal(hasCloseOnExec(leftLock), false, 'the descriptor left out keeps its flags')
      for (const fd of descriptorsWhere(underDirectory(first)).keys()) assert.equal(hasCloseOnExec(fd), false, 'another directory is not touched')
      assert.deepEqual(closeOnExecWhere(underDirectory(second), new Set([leftLock])), [], 'nothing left to mark')
    } finally {
      await a.close()
      await b.close()
    }
  })
})

describe('r53: without the addon', { skip: notLinux }, () => {
  it('nothing is marked, and closeOnExecStatus says why', async () => {
    const module = pathToFileURL(fileURLToPath(new URL('../src/close-on-exec.ts', import.meta.url))).href
    const script = `const m = await import(${JSON.stringify(module)}); console.log(JSON.stringify({ status: m.closeOnExecStatus(), marked: m.closeOnExecWhere(() => true) ?? null }))`
    const { stdout } = await exec(process.execPath, ['--import', TS_LOADER, '--input-type=module', '-e', script], { env: { ...process.env, GALLEONFS_NATIVE_AEAD: '0' } })
    assert.deepEqual(JSON.parse(stdout), { status: { available: false, reason: 'the native addon is not in use: turned off by GALLEONFS_NATIVE_AEAD=0' }, marked: null })
  })
})
