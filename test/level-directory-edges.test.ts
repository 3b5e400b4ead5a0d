// Edge cases of the level block store (a real classic-level database on disk) and of the directory
// backup target (real files): damaged databases, a second process holding the lock, scans that
// outlive close(), listing failures, and the durability of chunk directories.

import { describe, it, mock } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import fs, { mkdir, mkdtemp, open, readdir, rm, stat, unlink, writeFile } from 'node:fs/promises'
import { syncBuiltinESMExports } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ClassicLevel } from 'classic-level'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { LevelBlockStore } from '../backends/level/index.js'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { addr, assertBytes, bytesOf, collect, put } from './conformance/fixtures.js'
import { childOrTests, readChildLines, reportLine } from './crash/support.js'
import { scriptArgs } from './support/child-script.js'

const CHILD_ENV = 'GALLEON_LEVEL_EDGES_CHILD'
const SELF = fileURLToPath(import.meta.url)
const ROOT = fileURLToPath(new URL('..', import.meta.url))

async function withDir (body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'galleon-level-dir-'))
  try {
    await body(dir)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

async function codeOf (attempt: Promise<unknown>): Promise<{ code: unknown, message: string }> {
  try {
    await attempt
    return { code: 'no error', message: '' }
  } catch (err) {
    return { code: (err as { code?: unknown }).code, message: String((err as Error).message) }
  }
}

/**
 * Block `i` of storeWithTable: compressible, so that damage to a table trips LevelDB's decompression
 * (classic-level reads without verifying table checksums, so damaged raw bytes would come back).
 */
const blockOf = (i: number): Uint8Array => new Uint8Array(4096).fill(i & 0xff)

/** A level store at `location` holding 200 blocks in a table file (written, then compacted by a reopen). */
async function storeWithTable (location: string): Promise<void> {
  const store = new LevelBlockStore({ location })
  await store.open()
  await store.batch(Array.from({ length: 200 }, (_, i) => put(addr(1, i), blockOf(i))), { sync: true })
  await store.close()
  await store.open() // LevelDB turns the log into a table file when it opens
  await store.close()
  assert.ok((await readdir(location)).some((name) => name.endsWith('.ldb')), 'a table file to damage')
}

/** The child: holds the level store at argv[2] open until killed. */
async function holdStoreOpen (): Promise<void> {
  const store = new LevelBlockStore({ location: process.argv[2] as string })
  await store.open()
  reportLine('ready')
  setInterval(() => {}, 60_000)
}

await childOrTests(CHILD_ENV, holdStoreOpen, async () => {
  describe('level block store edges', () => {
    it('refuses a database that lost its CURRENT file with CORRUPTION, keeping its table files, instead of starting it empty', async () => {
      await withDir(async (dir) => {
        const location = join(dir, 'blocks')
        await storeWithTable(location)
        const tables = (await readdir(location)).filter((name) => name.endsWith('.ldb'))
        await unlink(join(location, 'CURRENT'))
        const outcome = await codeOf(new LevelBlockStore({ location }).open())
        assert.equal(outcome.code, 'CORRUPTION', outcome.message)
        assert.ok(outcome.message.includes(location), `the message names the location: ${outcome.message}`)
        for (const table of tables) await stat(join(location, table)) // still there
        // What the message advises brings the blocks back.
        await ClassicLevel.repair(location)
        const repaired = new LevelBlockStore({ location })
        await repaired.open()
        try {
          assert.equal((await repaired.stats()).blocks, 200)
          assertBytes(await repaired.get(addr(1, 199)), blockOf(199))
        } finally {
          await repaired.close()
        }
      })
    })

    it('an instance whose metadata database lost its CURRENT file refuses to open (CORRUPTION) instead of starting with an empty catalog', async () => {
      await withDir(async (dir) => {
        const storagePath = join(dir, 'storage')
        const g = await GalleonFS.open({ storagePath })
        await g.createVolume({ name: 'kept', sizeBytes: 1 << 20 })
        await g.write('kept', 0, Uint8Array.of(7), WriteConcern.WriteDurable)
        await g.close()
        // A small catalog lives in LevelDB's log, not in a table: the check must see logs too.
        const location = join(storagePath, 'metadata')
        await unlink(join(location, 'CURRENT'))
        const outcome = await codeOf(GalleonFS.open({ storagePath }))
        assert.equal(outcome.code, 'CORRUPTION', outcome.message)
        assert.ok(outcome.message.includes('metadata database'), outcome.message)
        await ClassicLevel.repair(location)
        const again = await GalleonFS.open({ storagePath })
        try {
          assert.deepEqual((await again.listVolumes()).map((volume) => volume.name), ['kept'])
          assert.equal((await again.read('kept', 0, 1))[0], 7)
        } finally {
          await again.close()
        }
      })
    })

    it('a new store, and one whose creation was cut short before any table, still open', async () => {
      await withDir(async (dir) => {
        const fresh = new LevelBlockStore({ location: join(dir, 'a', 'b', 'fresh') })
        await fresh.open()
        await fresh.close()
        // A crash while LevelDB creates a database leaves a manifest and no CURRENT: nothing to lose.
        const cut = join(dir, 'cut')
        await mkdir(cut)
        await writeFile(join(cut, 'MANIFEST-000001'), '')
        const store = new LevelBlockStore({ location: cut })
        await store.open()
        await store.batch([put(addr(1, 1), bytesOf(10, 1))])
        await store.close()
      })
    })

    it('damage LevelDB detects (a manifest with a bad checksum, a table block that does not decompress) is CORRUPTION naming the location', async () => {
      await withDir(async (dir) => {
        for (const kind of ['MANIFEST-', '.ldb']) {
          const location = join(dir, kind.replace(/\W/g, ''))
          await storeWithTable(location)
          const name = (await readdir(location)).find((entry) => kind.endsWith('-') ? entry.startsWith(kind) : entry.endsWith(kind)) as string
          const handle = await open(join(location, name), 'r+')
          try {
            const size = (await handle.stat()).size
            await handle.write(Buffer.alloc(Math.min(64, size - 20), 0xcd), 0, Math.min(64, size - 20), Math.min(10, size - 1) + (kind === '.ldb' ? Math.floor(size / 3) : 0))
          } finally {
            await handle.close()
          }
          const store = new LevelBlockStore({ location })
          const outcome = await codeOf(store.open())
          assert.equal(outcome.code, 'CORRUPTION', `${name}: ${outcome.message}`)
          assert.ok(outcome.message.includes(location), `${name}: the message names the location: ${outcome.message}`)
          assert.equal(store.status, 'closed')
        }
      })
    })

    it('a location that is a file is IO_ERROR naming the location and the reason', async () => {
      await withDir(async (dir) => {
        const location = join(dir, 'not-a-directory')
        await writeFile(location, 'x')
        const outcome = await codeOf(new LevelBlockStore({ location }).open())
        assert.equal(outcome.code, 'IO_ERROR', outcome.message)
        assert.ok(outcome.message.includes(location), outcome.message)
        assert.match(outcome.message, /EEXIST|exists|not a directory/i, 'says why')
      })
    })

    it('a second process opening the same location gets BUSY naming the location, and the lock goes with that process', async () => {
      await withDir(async (dir) => {
        const location = join(dir, 'blocks')
        const child = spawn(process.execPath, [...scriptArgs(SELF), location], { cwd: ROOT, env: { ...process.env, [CHILD_ENV]: '1' }, stdio: ['ignore', 'pipe', 'pipe'] })
        let ready!: () => void
        const isReady = new Promise<void>((resolve) => { ready = resolve })
        const exited = readChildLines(child, (line) => { if (line === 'ready') ready() })
        try {
          await Promise.race([isReady, exited.then((exit) => { throw new Error(`child ended first: ${exit.stderr.slice(0, 500)}`) })])
          const outcome = await codeOf(new LevelBlockStore({ location }).open())
          assert.equal(outcome.code, 'BUSY', outcome.message)
          assert.ok(outcome.message.includes(location), outcome.message)
        } finally {
          child.kill('SIGKILL')
          await exited
        }
        const store = new LevelBlockStore({ location })
        await store.open()
        await store.close()
      })
    })

    it('an addresses() scan that outlives close() rejects with NOT_OPEN, never IO_ERROR and never ends early', async () => {
      await withDir(async (dir) => {
        const store = new LevelBlockStore({ location: join(dir, 'blocks') })
        await store.open()
        await store.batch(Array.from({ length: 3000 }, (_, i) => put(addr(1, i), bytesOf(16, i))))
        for (const reopen of [false, true]) {
          const scan = store.addresses()[Symbol.asyncIterator]()
          assert.equal((await scan.next()).done, false)
          await store.close()
          if (reopen) await store.open()
          let seen = 1
          const outcome = await codeOf((async () => { while ((await scan.next()).done !== true) seen++ })())
          assert.equal(outcome.code, 'NOT_OPEN', `${reopen ? 'closed and reopened' : 'closed'}: ${outcome.message} after ${seen} addresses`)
          if (!reopen) await store.open()
        }
        // A scan given up early leaves nothing open that would keep close() or a new scan waiting.
        for await (const address of store.addresses()) { assert.equal(address.volume, 1); break }
        assert.equal((await collect(store.addresses({ volume: 1 }))).length, 3000)
        await store.close()
      })
    })
  })

  describe('directory backup target edges', () => {
    const idOf = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex')

    it('a listing that fails is an IO_ERROR, not an empty list', async () => {
      await withDir(async (dir) => {
        const target = new DirectoryBackupTarget({ path: dir })
        await target.open()
        const data = bytesOf(100, 1)
        await target.putChunk(idOf(data), data)
        // A fan directory that cannot be listed (here a file in its place).
        const other = bytesOf(100, 2)
        const fan = join(dir, 'chunks', idOf(other).slice(0, 2))
        await writeFile(fan, 'not a directory')
        assert.equal((await codeOf(collect(target.listChunks()))).code, 'IO_ERROR')
        await rm(fan)
        assert.deepEqual(await collect(target.listChunks()), [idOf(data)])
        await rm(join(dir, 'manifests'), { recursive: true })
        await writeFile(join(dir, 'manifests'), 'not a directory')
        assert.equal((await codeOf(collect(target.listManifests()))).code, 'IO_ERROR')
        await target.close()
      })
    })

    it('flush() makes a chunk put into a new fan directory durable: the fan and the chunks directory are synced', async (t) => {
      await withDir(async (dir) => {
        const target = new DirectoryBackupTarget({ path: dir })
        await target.open()
        const synced: string[] = []
        // Records every directory opened for reading (what syncDirectory does to fsync one).
        const realOpen = fs.open
        mock.method(fs, 'open', async (...args: Parameters<typeof fs.open>) => {
          const handle = await realOpen(...args)
          if (args[1] === 'r' && typeof args[0] === 'string') {
            const realSync = handle.sync.bind(handle)
            handle.sync = async () => { await realSync(); synced.push(args[0] as string) }
          }
          return handle
        })
        syncBuiltinESMExports()
        t.after(() => { mock.restoreAll(); syncBuiltinESMExports() })
        const data = bytesOf(100, 3)
        await target.putChunk(idOf(data), data)
        await target.flush()
        assert.ok(synced.includes(join(dir, 'chunks', idOf(data).slice(0, 2))), `the fan directory was synced: ${synced.join(', ')}`)
        assert.ok(synced.includes(join(dir, 'chunks')), `the chunks directory, which gained the new fan, was synced: ${synced.join(', ')}`)
        await target.close()
      })
    })

    it('flush() resolves only once a flush already running has synced what it took', async (t) => {
      await withDir(async (dir) => {
        const target = new DirectoryBackupTarget({ path: dir })
        await target.open()
        const data = bytesOf(100, 4)
        await target.putChunk(idOf(data), data)
        // Hold the first flush's directory sync until released.
        let release!: () => void
        const gate = new Promise<void>((resolve) => { release = resolve })
        let held = false
        const realOpen = fs.open
        mock.method(fs, 'open', async (...args: Parameters<typeof fs.open>) => {
          if (args[1] === 'r' && !held) {
            held = true
            await gate
          }
          return await realOpen(...args)
        })
        syncBuiltinESMExports()
        t.after(() => { mock.restoreAll(); syncBuiltinESMExports() })
        const first = target.flush()
        let secondDone = false
        const second = target.flush().then(() => { secondDone = true })
        for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve))
        assert.ok(held, 'the first flush is syncing')
        assert.equal(secondDone, false, 'a second flush resolved while the chunk put before it was not synced yet')
        release()
        await Promise.all([first, second])
        await target.close()
      })
    })
  })
})
