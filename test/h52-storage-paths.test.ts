// Storage that is not what it seems: GalleonFS.open() pointed at a file, a symlink, part of a
// storage, another program's LevelDB, the other backend's storage, a storage missing its metadata
// or its blocks, metadata of a newer format, a read-only file system, a directory another user
// owns, a storage open in another process (and one killed there), and a copy of a live storage.
// Each refusal is a GalleonError with a code, changes nothing stored, and leaves no lock behind.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcessByStdio } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmod, cp, lstat, mkdir, mkdtemp, open, readFile, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import { ClassicLevel } from 'classic-level'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { childExit, scriptArgs } from './support/child-script.js'
import { segmentFile } from './support/file-segments.js'

const CHILD = fileURLToPath(new URL('./support/h52-child.ts', import.meta.url))
const NOBODY = { uid: 65534, gid: 65534 }
const run = promisify(execFile)
const unhandled: unknown[] = []
const onUnhandled = (err: unknown): void => { unhandled.push(err) }
let base = ''

before(async () => {
  process.on('unhandledRejection', onUnhandled)
  base = await mkdtemp(join(tmpdir(), 'galleon-h52-'))
  await chmod(base, 0o755) // the child run as nobody reaches its directory through here
})
after(async () => {
  process.off('unhandledRejection', onUnhandled)
  await rm(base, { recursive: true, force: true })
  assert.deepEqual(unhandled, [], 'no unhandled rejection')
})

let dirs = 0
async function freshDir (): Promise<string> {
  const dir = join(base, `case-${++dirs}`)
  await mkdir(dir)
  return dir
}

/** A storage holding volume v with 8 KiB of sevens at offset 0. */
async function seed (storagePath: string, backend?: 'level'): Promise<void> {
  const g = await GalleonFS.open({ storagePath, ...(backend === undefined ? {} : { backend }) })
  const volume = await g.createVolume({ name: 'v', sizeBytes: '1M' })
  await g.write(volume, 0, new Uint8Array(8192).fill(7), WriteConcern.WriteDurable)
  await g.close()
}

async function readsSevens (storagePath: string, backend?: 'level'): Promise<void> {
  const g = await GalleonFS.open({ storagePath, ...(backend === undefined ? {} : { backend }) })
  try {
    assert.ok((await g.read('v', 0, 8192)).every((byte) => byte === 7), 'volume v still reads its sevens')
  } finally {
    await g.close()
  }
}

/**
 * Names, modes and bytes of every file under `dir`, except LevelDB directories (a database rewrites
 * its LOG and MANIFEST whenever it is opened): those by their keys and values.
 */
async function fingerprint (dir: string): Promise<string> {
  const hash = createHash('sha256')
  const walk = async (path: string, rel: string): Promise<void> => {
    const names = (await readdir(path).catch(() => undefined))?.sort()
    if (names === undefined) { hash.update(`absent ${rel}\n`); return }
    if (names.includes('CURRENT')) {
      const db = new ClassicLevel<string, string>(path)
      for (const [key, value] of await db.iterator().all()) hash.update(`${rel} ${key}=${value}\n`)
      await db.close()
      return
    }
    for (const name of names) {
      const info = await lstat(join(path, name))
      hash.update(`${rel}/${name} ${info.mode}\n`)
      if (info.isDirectory()) await walk(join(path, name), `${rel}/${name}`)
      else if (info.isFile()) hash.update(await readFile(join(path, name)))
    }
  }
  await walk(dir, '')
  return hash.digest('hex')
}

/**
 * Opens with `options`, expecting a refusal with `code` that names `names` and changes nothing
 * under `watched` (not checked without it: a read-only file system).
 */
async function refused (options: Parameters<typeof GalleonFS.open>[0], code: string, names: string, watched?: string): Promise<string> {
  const before = watched === undefined ? '' : await fingerprint(watched)
  const err = await GalleonFS.open(options).then(async (g) => { await g.close(); return undefined }, (e: unknown) => e)
  assert.ok(err instanceof Error && err.name === 'GalleonError', `a GalleonError, got ${String(err)}`)
  assert.equal((err as { code?: unknown }).code, code, err.message)
  assert.ok(err.message.includes(names), `the message names ${names}: ${err.message}`)
  if (watched !== undefined) assert.equal(await fingerprint(watched), before, `nothing under ${watched} changed`)
  return err.message
}

describe('open() on paths that are not a storage directory', () => {
  it('a regular file and a dangling symlink are refused; a symlink to a storage opens it', async () => {
    const dir = await freshDir()
    await writeFile(join(dir, 'file'), 'not a directory')
    await refused({ storagePath: join(dir, 'file') }, 'IO_ERROR', join(dir, 'file'), dir)
    await symlink(join(dir, 'nowhere'), join(dir, 'dangling'))
    await refused({ storagePath: join(dir, 'dangling') }, 'IO_ERROR', join(dir, 'dangling'), dir)
    await seed(join(dir, 'real'))
    await symlink(join(dir, 'real'), join(dir, 'link'))
    await readsSevens(join(dir, 'link'))
  })

  it("a storage's blocks or metadata directory, or another program's LevelDB, is refused untouched", async () => {
    const dir = await freshDir()
    await seed(join(dir, 's'))
    await refused({ storagePath: join(dir, 's', 'blocks') }, 'INVALID_ARGUMENT', join(dir, 's', 'blocks'), dir)
    await refused({ storagePath: join(dir, 's', 'metadata') }, 'INVALID_ARGUMENT', join(dir, 's', 'metadata'), dir)
    const foreign = new ClassicLevel<string, string>(join(dir, 'app-db'))
    await foreign.put('user:1', 'alice')
    await foreign.close()
    await refused({ storagePath: join(dir, 'app-db') }, 'INVALID_ARGUMENT', join(dir, 'app-db'), dir)
    // Another program's database where the metadata belongs: not a key is written into it.
    await mkdir(join(dir, 'app'))
    await cp(join(dir, 'app-db'), join(dir, 'app', 'metadata'), { recursive: true })
    await refused({ storagePath: join(dir, 'app') }, 'INVALID_ARGUMENT', join(dir, 'app', 'metadata'), dir)
    await readsSevens(join(dir, 's'))
  })

  it('an empty directory and one of unrelated files become new storages, the files kept', async () => {
    const dir = await freshDir()
    await writeFile(join(dir, 'notes.txt'), 'keep me')
    const g = await GalleonFS.open({ storagePath: dir })
    assert.deepEqual(await g.listVolumes(), [])
    await g.close()
    assert.equal(await readFile(join(dir, 'notes.txt'), 'utf8'), 'keep me')
  })
})

describe('open() on a storage that does not match the options or is incomplete', () => {
  it('the other backend is refused untouched, naming the one to use', async () => {
    const dir = await freshDir()
    await seed(join(dir, 'file-store'))
    await seed(join(dir, 'level-store'), 'level')
    await refused({ storagePath: join(dir, 'file-store'), backend: 'level' }, 'INVALID_ARGUMENT', "'file'", dir)
    await refused({ storagePath: join(dir, 'level-store') }, 'INVALID_ARGUMENT', "'level'", dir)
    await readsSevens(join(dir, 'file-store'))
    await readsSevens(join(dir, 'level-store'), 'level')
  })

  it('another block size is refused before the block store is touched', async () => {
    const dir = await freshDir()
    await seed(join(dir, 's'))
    await refused({ storagePath: join(dir, 's'), blockSize: 8192 }, 'INVALID_ARGUMENT', '4096', dir)
  })

  it('blocks without their metadata are refused untouched (not deleted as orphans), and open once it is back', async () => {
    const dir = await freshDir()
    await seed(join(dir, 's'))
    await cp(join(dir, 's', 'metadata'), join(dir, 'metadata-copy'), { recursive: true })
    await rm(join(dir, 's', 'metadata'), { recursive: true })
    await refused({ storagePath: join(dir, 's') }, 'CORRUPTION', join(dir, 's', 'metadata'), dir)
    // An empty database where the metadata was (made by an earlier open) is no better.
    const empty = new ClassicLevel(join(dir, 's', 'metadata'))
    await empty.open()
    await empty.close()
    await refused({ storagePath: join(dir, 's') }, 'CORRUPTION', join(dir, 's', 'metadata'), dir)
    await rm(join(dir, 's', 'metadata'), { recursive: true })
    await cp(join(dir, 'metadata-copy'), join(dir, 's', 'metadata'), { recursive: true })
    await readsSevens(join(dir, 's'))
  })

  it('metadata without its blocks is refused instead of serving zeros', async () => {
    const dir = await freshDir()
    await seed(join(dir, 's'))
    await cp(join(dir, 's', 'blocks'), join(dir, 'blocks-copy'), { recursive: true })
    await rm(join(dir, 's', 'blocks'), { recursive: true })
    await refused({ storagePath: join(dir, 's') }, 'CORRUPTION', join(dir, 's', 'blocks'), dir)
    await cp(join(dir, 'blocks-copy'), join(dir, 's', 'blocks'), { recursive: true })
    await readsSevens(join(dir, 's'))
  })

  it('a metadata database LevelDB finds damaged is CORRUPTION, not an IO_ERROR', async () => {
    const dir = await freshDir()
    await seed(join(dir, 's'))
    const manifest = (await readdir(join(dir, 's', 'metadata'))).find((name) => name.startsWith('MANIFEST-')) as string
    await writeFile(join(dir, 's', 'metadata', manifest), Buffer.alloc(200, 0x41))
    const blocks = await fingerprint(join(dir, 's', 'blocks'))
    await refused({ storagePath: join(dir, 's') }, 'CORRUPTION', join(dir, 's', 'metadata'))
    assert.equal(await fingerprint(join(dir, 's', 'blocks')), blocks, 'the blocks are not touched')
  })

  it('metadata of a newer format is refused, naming the version, and not rewritten', async () => {
    const dir = await freshDir()
    await seed(join(dir, 's'))
    const db = new ClassicLevel<string, string>(join(dir, 's', 'metadata'))
    await db.put('!settings!format', '2')
    await db.close()
    await refused({ storagePath: join(dir, 's') }, 'CORRUPTION', 'format 2', dir)
  })

  it('a segment whose last batch a newer version wrote (record magic GFR4) is refused, not cut off as a torn tail', async () => {
    const dir = await freshDir()
    const storagePath = join(dir, 's')
    await seed(storagePath)
    const segment = await segmentFile(join(storagePath, 'blocks'))
    const before = (await stat(segment)).size
    const g = await GalleonFS.open({ storagePath })
    await g.write('v', 8192, new Uint8Array(8192).fill(9), WriteConcern.WriteDurable)
    await g.close()
    // As if a newer version had written that batch (two records, found by their magic) in its
    // format and then crashed before anything followed it (no mark stating its sync, no CLEAN
    // marker). 'GFR1' to 'GFR3' are this version's own (its segments' records are salted, 'GFR2';
    // those of older segments 'GFR1', their marks 'GFR3'), so the next format is 'GFR4'.
    const bytes = await readFile(segment)
    const records: number[] = []
    for (let at = bytes.indexOf('GFR2', before, 'latin1'); at !== -1; at = bytes.indexOf('GFR2', at + 1, 'latin1')) if (bytes[at + 8] === 1) records.push(at) // puts, not marks
    const recordBytes = 36 + 8 + 4096
    assert.equal(records.length, 2, 'two records of a block each')
    assert.equal((records[1] as number) - (records[0] as number), recordBytes)
    const handle = await open(segment, 'r+')
    await handle.truncate((records[1] as number) + recordBytes)
    for (const offset of records) await handle.write(Buffer.from('GFR4', 'latin1'), 0, 4, offset)
    await handle.close()
    await rm(join(storagePath, 'blocks', 'CLEAN'))
    await refused({ storagePath }, 'CORRUPTION', 'GFR4', dir)
  })
})

/** Why this machine cannot run a child as nobody or mount a tmpfs, or undefined when it can. */
function rootMissing (): string | undefined {
  return process.getuid?.() === 0 ? undefined : 'needs root (to run a child as the user nobody, to mount a tmpfs)'
}

interface ChildResult { opened: boolean, code?: string, galleon?: string, message?: string, first?: number, uniform?: boolean, badBlocks?: number, unhandled: string[] }

async function openInChild (storagePath: string, user?: typeof NOBODY): Promise<ChildResult> {
  const { stdout } = await run(process.execPath, [...scriptArgs(CHILD), 'open', storagePath], { ...(user ?? {}), timeout: 60_000 })
  return JSON.parse(stdout.trim().split('\n').pop() as string) as ChildResult
}

describe('open() where this process may not write', () => {
  it('a read-only file system is refused with IO_ERROR saying so, and opens once writable', { skip: rootMissing() }, async () => {
    const mountPoint = await freshDir()
    await run('mount', ['-t', 'tmpfs', '-o', 'size=32m', 'tmpfs', mountPoint])
    try {
      const storagePath = join(mountPoint, 's')
      await seed(storagePath)
      await run('mount', ['-o', 'remount,ro', mountPoint])
      const message = await refused({ storagePath }, 'IO_ERROR', storagePath)
      assert.match(message, /read-only/)
      await run('mount', ['-o', 'remount,rw', mountPoint])
      assert.ok(!(await readdir(join(storagePath, 'blocks'))).includes('LOCK'), 'no lock left behind')
      await readsSevens(storagePath)
    } finally {
      await run('umount', [mountPoint]).catch(async () => await run('umount', ['-l', mountPoint]))
    }
  })

  it('a storage another user owns is refused with a GalleonError (IO_ERROR), not a raw EACCES', { skip: rootMissing() }, async () => {
    const dir = await freshDir()
    const storagePath = join(dir, 's')
    await seed(storagePath)
    // nobody may enter the directory but not create its metadata directory in it.
    await rm(join(storagePath, 'metadata'), { recursive: true })
    await rm(join(storagePath, 'blocks'), { recursive: true })
    await chmod(storagePath, 0o555)
    const empty = await openInChild(storagePath, NOBODY)
    assert.deepEqual([empty.opened, empty.galleon, empty.code], [false, 'GalleonError', 'IO_ERROR'], empty.message)
    assert.ok(empty.message?.includes(storagePath), empty.message)
    // A whole storage owned by root, read-only to others.
    const owned = join(dir, 'owned')
    await seed(owned)
    const result = await openInChild(owned, NOBODY)
    assert.deepEqual([result.opened, result.galleon, result.code, result.unhandled], [false, 'GalleonError', 'IO_ERROR', []], result.message)
    await readsSevens(owned)
  })
})

describe('a storage open in another process', () => {
  async function hold (storagePath: string): Promise<{ child: ChildProcessByStdio<null, Readable, Readable>, pid: number }> {
    const child = spawn(process.execPath, [...scriptArgs(CHILD), 'hold', storagePath], { stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    const pid = await new Promise<number>((resolve, reject) => {
      child.stdout.on('data', (chunk: Buffer) => {
        output += chunk.toString()
        const match = /READY (\d+)/.exec(output)
        if (match !== null) resolve(Number(match[1]))
      })
      child.once('exit', () => { reject(new Error(`the holding child exited early: ${output}`)) })
    })
    return { child, pid }
  }

  it('is BUSY naming the holder, taken over after the holder is killed, and a live copy opens consistent', async () => {
    const dir = await freshDir()
    const storagePath = join(dir, 's')
    await seed(storagePath)
    const { child, pid } = await hold(storagePath)
    try {
      const busy = await openInChild(storagePath)
      assert.deepEqual([busy.opened, busy.code], [false, 'BUSY'], busy.message)
      assert.ok(busy.message?.includes(String(pid)), `BUSY names the holder ${pid}: ${busy.message}`)
      // Copied while written: opens as after a crash, never with a run half of one write.
      // (A file removed while cp runs is not copied: as the storage would be without it.)
      await run('cp', ['-a', storagePath, join(dir, 'copy')]).catch((err: { stderr?: string }) => {
        if (!/No such file/.test(err.stderr ?? '')) throw err
      })
      const copy = await openInChild(join(dir, 'copy'))
      assert.deepEqual([copy.opened, copy.uniform, copy.badBlocks, copy.unhandled], [true, true, 0, []], copy.message)
    } finally {
      child.kill('SIGKILL')
      await childExit(child)
    }
    const after = await openInChild(storagePath)
    assert.deepEqual([after.opened, after.uniform, after.badBlocks], [true, true, 0], after.message)
  })
})
