// Review r53: libfuse opens /dev/fuse, and LevelDB its files, without close-on-exec, so every child
// process of a process serving mounts inherited them; a child holding /dev/fuse kept a mount's
// connection alive after the serving process died, and whatever then used the mount hung. Real
// FUSE mounts, real classic-level databases, real `sleep` children read through /proc.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { openSync, closeSync, readdirSync, readlinkSync } from 'node:fs'
import { mkdtemp, mkdir, realpath, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import { ClassicLevel } from 'classic-level'
import { GalleonFS } from '../src/index.js'
import { closeOnExecStatus, closeOnExecWhere, descriptorsWhere, hasCloseOnExec, underDirectory } from '../src/close-on-exec.js'
import { nativeAead, nativeAeadStatus } from '../src/crypto/native-aead.js'
import { TS_LOADER, childExit, scriptArgs } from './support/child-script.js'
import { fuseMissing } from './support/fuse-available.js'
import { abortMountsUnder } from './support/fuse-fuzz-watchdog.js'
import { until } from './support/wait.js'

const exec = promisify(execFile)

const noAddon = nativeAead() === undefined ? `the native addon is not in use: ${nativeAeadStatus().reason}` : undefined
const notLinux = process.platform === 'linux' ? undefined : 'descriptors are listed through /proc/self/fd (Linux)'
const skip = notLinux ?? noAddon
const fuseSkip = skip ?? fuseMissing()
if (skip !== undefined) process.stdout.write(`# SKIP r53 close-on-exec tests: ${skip}\n`)
else if (fuseSkip !== undefined) process.stdout.write(`# SKIP r53 FUSE close-on-exec tests: ${fuseSkip}\n`)

let root: string
before(async () => { root = await realpath(await mkdtemp(join(tmpdir(), 'r53-cloexec-'))) })
after(async () => { await rm(root, { recursive: true, force: true }) })

/** The targets of a process's open descriptors (as /proc/<pid>/fd shows them). */
function descriptorTargets (pid: number): string[] {
  const targets: string[] = []
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      targets.push(readlinkSync(`/proc/${pid}/fd/${fd}`))
    } catch {}
  }
  return targets
}

/** Starts `sleep 30`, as an application starts a worker; resolves once it runs sleep (exec done). */
async function startSleep (): Promise<ChildProcess & { pid: number }> {
  const child = spawn('sleep', ['30'], { stdio: 'ignore' })
  await until('the child runs sleep', () => { try { return readlinkSync(`/proc/${child.pid as number}/exe`).endsWith('/sleep') } catch { return false } })
  return child as ChildProcess & { pid: number }
}

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

describe('r53: children of a process serving mounts inherit neither /dev/fuse nor the storage\'s files', { skip: fuseSkip }, () => {
  it('a child started after a FUSE mount on a level-backed storage holds no /dev/fuse and no file under the storage path', async () => {
    const storagePath = join(root, 'storage')
    const g = await GalleonFS.open({ storagePath, backend: 'level', mount: 'fuse' })
    let sleep: ChildProcess | undefined
    try {
      await g.createVolume({ name: 'v', sizeBytes: '1M' })
      await g.write('v', 0, new Uint8Array(4096).fill(1))
      await g.mounts.mountVolume('v', join(root, 'mnt'))
      sleep = await startSleep()
      const leaked = descriptorTargets(sleep.pid as number).filter((target) => target === '/dev/fuse' || target.startsWith(`${storagePath}/`))
      assert.deepEqual(leaked, [], 'the child inherited these descriptors')
    } finally {
      sleep?.kill('SIGKILL')
      await g.close()
    }
  })

  it('a child serving a mount is SIGKILLed while its own child `sleep` lives: a read of the mount fails at once (ENOTCONN) instead of hanging', async () => {
    const mountPoint = join(root, 'served')
    await mkdir(mountPoint)
    const server = spawn(process.execPath, [...scriptArgs(fileURLToPath(new URL('./support/r53-mount-child.ts', import.meta.url))), mountPoint], { stdio: ['ignore', 'pipe', 'inherit'] })
    let sleepPid: number | undefined
    try {
      let out = ''
      server.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
      await until('the child serves the mount and started sleep', () => out.includes('\n') || server.exitCode !== null, 60_000)
      sleepPid = (JSON.parse(out.split('\n')[0] as string) as { sleep: number }).sleep
      server.kill('SIGKILL')
      await childExit(server)
      // Another process reads the mount: it must fail with ENOTCONN, not wait on a connection no
      // one serves. Past the deadline the connection is aborted (below), which ends the read.
      const reader = exec('dd', [`if=${join(mountPoint, 'data')}`, 'of=/dev/null', 'bs=4096', 'count=1'], { timeout: 60_000 }).then(() => ({ stderr: 'the read succeeded' }), (err: { stderr?: string }) => ({ stderr: err.stderr ?? String(err) }))
      let timer: NodeJS.Timeout | undefined
      const outcome = await Promise.race([reader, new Promise<'hung'>((resolve) => { timer = setTimeout(resolve, 20_000, 'hung') })])
      clearTimeout(timer)
      if (outcome === 'hung') {
        await abortMountsUnder(root)
        await reader
        assert.fail(`the read of the mount hung for 20 s after its server was killed: the connection is kept alive by ${JSON.stringify(descriptorTargets(sleepPid).filter((t) => t === '/dev/fuse'))} held by its sleep child`)
      }
      assert.match(outcome.stderr, /Transport endpoint is not connected/)
    } finally {
      server.kill('SIGKILL')
      await childExit(server)
      if (sleepPid !== undefined) try { process.kill(sleepPid, 'SIGKILL') } catch {}
      await abortMountsUnder(root)
    }
  })
})
