// Small files that must survive a crash whole or not at all (key files, salts): createFileExclusively.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises'
import { readdirSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createFileExclusively } from '../src/durable-files.js'
import { scriptArgs, childExit } from './support/child-script.js'

const CHILD = fileURLToPath(new URL('./fixtures/create-exclusive-child.ts', import.meta.url))

describe('createFileExclusively', () => {
  it('creates the file with its bytes and mode, refuses one that exists, lets exactly one of many racing creators win, and leaves no temporary file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'galleon-durable-'))
    try {
      const path = join(dir, 'master.key')
      assert.equal(await createFileExclusively(path, new TextEncoder().encode('first\n'), 0o600), true)
      assert.equal(await readFile(path, 'utf8'), 'first\n')
      assert.equal((await stat(path)).mode & 0o777, 0o600)
      assert.equal(await createFileExclusively(path, new TextEncoder().encode('second\n'), 0o600), false)
      assert.equal(await readFile(path, 'utf8'), 'first\n', 'an existing file is left as it was')
      const raced = join(dir, 'raced')
      const results = await Promise.all(Array.from({ length: 12 }, async (_, i) => await createFileExclusively(raced, new TextEncoder().encode(`creator ${i}\n`))))
      assert.equal(results.filter((won) => won).length, 1)
      assert.equal(await readFile(raced, 'utf8'), `creator ${results.indexOf(true)}\n`)
      assert.deepEqual((await readdir(dir)).sort(), ['master.key', 'raced'])
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('a process killed while it writes the file leaves no file at that name, never a partial one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'galleon-durable-'))
    const MIB = 64
    try {
      let partialSeen = 0
      for (let trial = 0; trial < 5 && partialSeen < 2; trial++) {
        const path = join(dir, `key-${trial}`)
        const child = spawn(process.execPath, [...scriptArgs(CHILD), path, String(MIB)], { stdio: ['ignore', 'pipe', 'inherit'] })
        let out = ''
        child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
        // Kill it once a file of this trial holds some of the bytes, but not all.
        const deadline = Date.now() + 30_000
        let killed = false
        while (!killed && Date.now() < deadline && !out.includes('done')) {
          for (const name of readdirSync(dir)) {
            if (!name.startsWith(`key-${trial}`)) continue
            const size = (() => { try { return statSync(join(dir, name)).size } catch { return -1 } })()
            if (size > 0 && size < MIB << 20) {
              child.kill('SIGKILL')
              killed = true
              partialSeen++
              break
            }
          }
          if (!killed) await new Promise((resolve) => setImmediate(resolve))
        }
        if (!killed) child.kill('SIGKILL')
        await childExit(child)
        const size = (() => { try { return statSync(path).size } catch { return undefined } })()
        assert.ok(size === undefined || size === MIB << 20, `the file at its name holds ${size} bytes of ${MIB << 20}: a partial key file`)
        // Whatever is there is whole, and a new creation (a restart) works or finds the whole file.
        if (size === undefined) assert.equal(await createFileExclusively(path, new TextEncoder().encode('again')), true)
      }
      assert.ok(partialSeen >= 1, 'no trial caught the child mid-write; the test proved nothing')
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
