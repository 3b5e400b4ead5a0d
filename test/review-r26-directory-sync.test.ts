// Review r26 of src/level-directory-sync.ts (ebc9727): which directory fsync a synced write waits
// for, what a failed directory check does to the write (applied in LevelDB already), and what the
// check costs on a directory with many names. readdir and open of node:fs/promises are wrapped
// (syncBuiltinESMExports) to see the module's calls; one test runs GalleonFS in a child process
// with a low open-files limit.

import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createRequire, syncBuiltinESMExports } from 'node:module'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { closeSync, openSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { MemoryLevel } from 'memory-level'

const CHILD = process.env.R26_DIRECTORY_SYNC_CHILD

/** Child: createVolume while every file descriptor is taken (as in a process at its open-files limit). */
async function childMain (storagePath: string): Promise<void> {
  const { GalleonFS } = await import('../src/index.js')
  const g = await GalleonFS.open({ storagePath })
  await g.createVolume({ name: 'a', sizeBytes: 1 << 20 })
  const fds: number[] = []
  try { for (;;) fds.push(openSync('/dev/null', 'r')) } catch {}
  const attempts: unknown[] = []
  const attempt = async (): Promise<void> => {
    try {
      await g.createVolume({ name: 'b', sizeBytes: 1 << 20 })
      attempts.push({ ok: true })
    } catch (err) {
      attempts.push({ galleon: (err as Error).constructor.name === 'GalleonError', code: (err as { code?: string }).code, message: (err as Error).message })
    }
  }
  await attempt()
  for (const fd of fds) closeSync(fd)
  await attempt()
  await g.close().catch(() => {})
  const reopened = await GalleonFS.open({ storagePath })
  const names = (await reopened.listVolumes()).map((volume) => volume.name).sort()
  await reopened.close()
  process.stdout.write(JSON.stringify({ attempts, names }) + '\n')
}

if (CHILD !== undefined) {
  await childMain(CHILD)
} else {
  const require = createRequire(import.meta.url)
  const fsp = require('node:fs/promises') as Record<string, (...args: unknown[]) => Promise<any>>
  const realReaddir = fsp.readdir as (...args: unknown[]) => Promise<string[]>
  const realOpen = fsp.open as (...args: unknown[]) => Promise<{ sync: () => Promise<void> }>
  /** What the module under test did, in order, for the directory being watched. */
  let events: string[] = []
  let watched = ''
  /** Set: a readdir of the watched directory waits for it after it has read the names. */
  let readdirGate: Promise<void> | undefined
  let readdirFailure: Error | undefined

  const { syncLevelDirectoryOnSyncedWrites } = await import('../src/level-directory-sync.js')
  const { latchLevelWrites } = await import('../src/level-write-latch.js')

  /** A stand-in database whose `_put` resolves when the test says (`finish(i)`), then logs `put<i>`. */
  function heldDatabase (): { db: Record<string, unknown>, finish: (i: number) => void } {
    const finishers: Array<() => void> = []
    const held: Array<Promise<void>> = []
    for (let i = 0; i < 8; i++) held.push(new Promise<void>((resolve) => { finishers.push(resolve) }))
    let calls = 0
    const db: Record<string, unknown> = {
      _put: async () => {
        const i = calls++
        await held[i]
        events.push(`put${i}`)
      }
    }
    return { db, finish: (i) => { (finishers[i] as () => void)() } }
  }

  const turns = async (n = 20): Promise<void> => { for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve)) }

  describe('review r26: LevelDB directory sync on synced writes', () => {
    let dir: string
    before(() => {
      fsp.readdir = async (...args: unknown[]) => {
        if (args[0] !== watched) return await realReaddir(...args)
        events.push('readdir')
        if (readdirFailure !== undefined) throw readdirFailure
        const names = await realReaddir(...args)
        if (readdirGate !== undefined) await readdirGate
        return names
      }
      fsp.open = async (...args: unknown[]) => {
        const handle = await realOpen(...args)
        if (args[0] === watched) {
          const sync = handle.sync.bind(handle)
          handle.sync = async () => { events.push('fsync'); await sync() }
        }
        return handle
      }
      syncBuiltinESMExports()
    })
    after(() => {
      fsp.readdir = realReaddir
      fsp.open = realOpen
      syncBuiltinESMExports()
    })

    it('a write that reached the log while a directory check was running waits for a later check (and its fsync)', async () => {
      dir = await mkdtemp(join(tmpdir(), 'r26-dirsync-'))
      try {
        watched = dir
        events = []
        await writeFile(join(dir, '000003.log'), '')
        const { db, finish } = heldDatabase()
        syncLevelDirectoryOnSyncedWrites(db, dir)
        const put = db._put as (...args: unknown[]) => Promise<void>
        let releaseGate = (): void => {}
        readdirGate = new Promise<void>((resolve) => { releaseGate = resolve })
        const first = put('k1', 'v', { sync: true }).then(() => { events.push('resolved0') })
        const second = put('k2', 'v', { sync: true }).then(() => { events.push('resolved1') })
        finish(0)
        await turns()
        // The first write's check has listed the names; then LevelDB starts a new log, the second
        // write lands in it and finishes while that check is still running.
        await writeFile(join(dir, '000005.log'), '')
        finish(1)
        await turns()
        readdirGate = undefined
        releaseGate()
        await Promise.all([first, second])
        const afterSecond = events.slice(events.indexOf('put1'))
        const resolved = afterSecond.indexOf('resolved1')
        assert.ok(afterSecond.slice(0, resolved).includes('readdir') && afterSecond.slice(0, resolved).includes('fsync'),
          `the second write resolved without a directory check and fsync begun after it: ${events.join(', ')}`)
      } finally {
        readdirGate = undefined
        await rm(dir, { recursive: true, force: true })
      }
    })

    it('a failed directory check (EMFILE) is a GalleonError and stops the writes: the write is in LevelDB already', async () => {
      dir = await mkdtemp(join(tmpdir(), 'r26-dirsync-'))
      const db = new MemoryLevel<string, string>()
      try {
        watched = dir
        events = []
        await db.open()
        syncLevelDirectoryOnSyncedWrites(db, dir)
        latchLevelWrites(db, 'the test database')
        readdirFailure = Object.assign(new Error(`EMFILE: too many open files, scandir '${dir}'`), { code: 'EMFILE', errno: -24, syscall: 'scandir' })
        await assert.rejects(db.put('volume/b', 'record', { sync: true } as never), (err: Error & { code?: string }) => {
          assert.equal(err.constructor.name, 'GalleonError', `a raw ${err.constructor.name} (${err.code}) reached the caller: ${err.message}`)
          assert.equal(err.code, 'IO_ERROR')
          return true
        })
        readdirFailure = undefined
        // Applied although it failed: the session must not go on as if it had not been.
        assert.equal(await db.get('volume/b'), 'record')
        await assert.rejects(db.put('volume/b2', 'record', { sync: true } as never), { code: 'IO_ERROR' })
      } finally {
        readdirFailure = undefined
        await db.close()
        await rm(dir, { recursive: true, force: true })
      }
    })

    it('a directory of 1,000 names (a level store of about 2 GiB) is not listed on every synced write', async () => {
      dir = await mkdtemp(join(tmpdir(), 'r26-dirsync-'))
      try {
        watched = dir
        for (let i = 0; i < 1000; i += 250) await Promise.all(Array.from({ length: 250 }, async (_, j) => { await writeFile(join(dir, `${String(i + j + 10).padStart(6, '0')}.ldb`), '') }))
        const db = { _put: async () => {} } as Record<string, unknown>
        syncLevelDirectoryOnSyncedWrites(db, dir)
        const put = db._put as (...args: unknown[]) => Promise<void>
        events = []
        for (let i = 0; i < 20; i++) await put(`k${i}`, 'v', { sync: true })
        const readdirs = events.filter((event) => event === 'readdir').length
        // A readdir of 1,000 names costs about an fsync of the directory (0.4 ms here), of 10,000
        // 5-15 ms, while LevelDB's own fdatasync takes ~0.1 ms: serial durable writes on a level
        // store with 10,000 table files fell from ~600/s to ~70/s.
        assert.ok(readdirs <= 2, `the directory was listed ${readdirs} times for 20 synced writes`)
      } finally {
        await rm(dir, { recursive: true, force: true })
      }
    })

    it('createVolume at the open-files limit: no raw EMFILE, and no second volume of one name', { timeout: 60_000 }, async () => {
      const storage = await mkdtemp(join(tmpdir(), 'r26-emfile-'))
      try {
        const self = fileURLToPath(import.meta.url)
        const output = await new Promise<string>((resolve, reject) => {
          const child = spawn('sh', ['-c', `ulimit -n 300 && exec "${process.execPath}" --import tsx "${self}"`], {
            cwd: join(fileURLToPath(new URL('.', import.meta.url)), '..'),
            env: { ...process.env, R26_DIRECTORY_SYNC_CHILD: join(storage, 's') },
            stdio: ['ignore', 'pipe', 'pipe']
          })
          let out = ''
          let errText = ''
          child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
          child.stderr.on('data', (chunk: Buffer) => { errText += chunk.toString() })
          child.on('error', reject)
          child.on('close', (code) => { code === 0 ? resolve(out) : reject(new Error(`child exited ${code}: ${errText}`)) })
        })
        const { attempts, names } = JSON.parse(output.trim().split('\n').at(-1) as string) as { attempts: Array<{ ok?: true, galleon?: boolean, code?: string, message?: string }>, names: string[] }
        assert.deepEqual(names, ['a', 'b'], `volumes after reopen: ${names.join(', ')} (attempts: ${JSON.stringify(attempts)})`)
        for (const attempt of attempts) if (attempt.ok !== true) assert.equal(attempt.galleon, true, `a raw error reached the caller: ${attempt.code} ${attempt.message}`)
      } finally {
        await rm(storage, { recursive: true, force: true })
      }
    })
  })
}
