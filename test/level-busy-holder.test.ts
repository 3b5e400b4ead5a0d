// A storage held open by another process is refused with BUSY naming that process, on the level
// backend too (LevelDB's LOCK file names nobody; the storage's owner.json does), and a file left
// by a process that died names nobody.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcessByStdio } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Readable, Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { GalleonFS, isGalleonError } from '../src/index.js'
import { childExit, scriptArgs } from './support/child-script.js'

const CHILD = fileURLToPath(new URL('./support/hold-storage-child.ts', import.meta.url))

async function holder (storagePath: string, backend: 'level' | 'file'): Promise<ChildProcessByStdio<Writable, Readable, Readable>> {
  const child = spawn(process.execPath, [...scriptArgs(CHILD), storagePath, backend], { stdio: ['pipe', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stderr.on('data', (chunk: Buffer) => { err += chunk.toString() })
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString(); if (out.includes('held')) resolve() })
    child.once('exit', (code) => { reject(new Error(`the holder exited (${String(code)}) before it held the storage: ${err}`)) })
  })
  return child
}

async function refusal (storagePath: string, backend: 'level' | 'file'): Promise<Error> {
  try {
    const g = await GalleonFS.open({ storagePath, backend })
    await g.close()
  } catch (err) {
    return err as Error
  }
  throw new Error('open succeeded while another process held the storage')
}

describe('a storage held by another process', () => {
  for (const backend of ['level', 'file'] as const) {
    it(`${backend} backend: BUSY names the holding process; once it is gone the storage opens`, async () => {
      const root = await mkdtemp(join(tmpdir(), 'galleon-holder-'))
      const storagePath = join(root, 's')
      const child = await holder(storagePath, backend)
      try {
        const err = await refusal(storagePath, backend)
        assert.ok(isGalleonError(err) && err.code === 'BUSY', String(err))
        assert.match(err.message, new RegExp(`already open in process ${String(child.pid)} `))
        child.kill('SIGKILL')
        await childExit(child)
        const g = await GalleonFS.open({ storagePath, backend })
        const owner = JSON.parse(await readFile(join(storagePath, 'owner.json'), 'utf8')) as { pid: number, host: string }
        assert.equal(owner.pid, process.pid)
        assert.equal(owner.host, hostname())
        await g.close()
      } finally {
        child.kill('SIGKILL')
        await rm(root, { recursive: true, force: true })
      }
    })
  }

  it('an owner file naming a process that is gone (a crash, an older version holding the lock) names nobody', async () => {
    const root = await mkdtemp(join(tmpdir(), 'galleon-holder-'))
    const storagePath = join(root, 's')
    const child = await holder(storagePath, 'level')
    try {
      // As if the process holding the lock had not written the file, and a dead one had.
      const gone = spawn(process.execPath, ['-e', ''])
      await childExit(gone)
      await writeFile(join(storagePath, 'owner.json'), JSON.stringify({ pid: gone.pid, host: hostname(), since: new Date().toISOString() }))
      const err = await refusal(storagePath, 'level')
      assert.ok(isGalleonError(err) && err.code === 'BUSY', String(err))
      assert.match(err.message, /already open in another GalleonFS instance or process;/)
    } finally {
      child.kill('SIGKILL')
      await childExit(child)
      await rm(root, { recursive: true, force: true })
    }
  })
})
