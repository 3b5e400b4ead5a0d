// Crash test of backups: a child (backup-child.ts) writes and backs up in a loop and is killed with
// SIGKILL at random moments. After each kill, a fresh in-memory instance pointed at the target
// checks that every backup the child saw complete is listed, verifies, and restores to exactly the
// volume image it reported; that any other backup on the target (one the kill interrupted after
// its manifest was stored) verifies and restores too, so a partial backup is never listed; and
// that the source storage reopens without the snapshot of an interrupted backup and keeps backing
// up, reusing the chunks already there.
//
// Env: GALLEON_CRASH_TRIALS (default 50; this test runs a fifth of it, at least 5), GALLEON_CRASH_SEED.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS } from '../../src/index.js'
import { seededRandom } from '../conformance/fixtures.js'
import { BLOCK_BYTES, VOLUME, VOLUME_BLOCKS } from './backup-child.js'
import { readChildLines, trialCount } from './support.js'
import { bundledScriptArgs } from '../support/child-bundle.js'

const TRIALS = Math.max(5, Math.ceil(trialCount() / 5))
const SEED = process.env.GALLEON_CRASH_SEED !== undefined ? Number(process.env.GALLEON_CRASH_SEED) : Math.floor(Math.random() * 0x7fffffff)
const CHILD = fileURLToPath(new URL('./backup-child.ts', import.meta.url))
const ROOT = fileURLToPath(new URL('../..', import.meta.url))

describe('backup crash test', () => {
  it(`${TRIALS} SIGKILL trials while backing up: the target only ever lists complete, restorable backups`, async () => {
    const storagePath = await mkdtemp(join(tmpdir(), 'galleon-backupcrash-'))
    const target = await mkdtemp(join(tmpdir(), 'galleon-backupcrash-target-'))
    const random = seededRandom(SEED)
    try {
      const setup = await GalleonFS.open({ storagePath })
      await setup.createVolume({ name: VOLUME, sizeBytes: VOLUME_BLOCKS * BLOCK_BYTES })
      await setup.close()
      const expected = new Map<string, string>()
      let completed = 0
      for (let trial = 0; trial < TRIALS; trial++) {
        // Half the kills are timed from the child's first completed backup, so that the workload
        // always reached what this test is about, however slow a loaded machine makes the child.
        const afterBackup = random() < 0.5
        const delay = afterBackup ? Math.floor(random() * 1000) : 150 + Math.floor(random() * 1500)
        const child = spawn(process.execPath, [...await bundledScriptArgs(CHILD), storagePath, 'file', String((trial + 1) * 1_000_000), String(Math.floor(random() * 0x7fffffff)), target], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
        const lines: string[] = []
        let timer: NodeJS.Timeout | undefined
        const exit = await readChildLines(child, (line) => {
          lines.push(line)
          if (timer === undefined && (afterBackup ? line.startsWith('B ') : line === 'ready')) timer = setTimeout(() => child.kill('SIGKILL'), delay)
        })
        if (timer !== undefined) clearTimeout(timer)
        const context = `seed ${SEED}, trial ${trial}, kill ${delay} ms after ${afterBackup ? 'its first backup' : 'ready'}`
        assert.equal(exit.signal, 'SIGKILL', `${context}: child ended otherwise: ${lines.slice(-2).join(' | ')} ${exit.stderr.slice(0, 1500)}`)
        for (const line of lines) {
          const [kind, id, hash] = line.split(' ')
          if (kind === 'B') { expected.set(id as string, hash as string); completed++ }
        }
        const reader = await GalleonFS.open({ inMemory: true })
        try {
          const listed = await reader.listBackups(undefined, { target })
          const ids = new Set(listed.map((b) => b.id))
          for (const id of expected.keys()) assert.ok(ids.has(id), `${context}: completed backup ${id} is not listed`)
          for (const backup of listed) {
            const check = await reader.verifyBackup(backup.id, { target })
            assert.deepEqual(check.problems, [], `${context}: backup ${backup.id} does not verify`)
            if (!expected.has(backup.id) && lines.every((line) => !line.includes(backup.id))) {
              // Stored just before the kill: it must restore as well, whatever it holds.
              await reader.restoreBackup(backup.id, { target, name: `late-${backup.id.slice(0, 8)}` })
              continue
            }
            const hash = expected.get(backup.id)
            if (hash === undefined) continue
            const volume = await reader.restoreBackup(backup.id, { target, name: `r-${backup.id.slice(0, 8)}` })
            const image = await reader.read(volume, 0, VOLUME_BLOCKS * BLOCK_BYTES)
            assert.equal(createHash('sha256').update(image).digest('hex'), hash, `${context}: backup ${backup.id} (${backup.strategy}) restores to other data`)
            await reader.deleteVolume(volume)
          }
        } finally {
          await reader.close()
        }
        // The source reopens without the snapshot of a backup the kill interrupted: every backup
        // snapshot left is one a stored backup names (kept as the base of the next).
        const source = await GalleonFS.open({ storagePath })
        try {
          const stored = new Set((await source.listBackups(undefined, { target })).map((b) => b.id))
          for (const snapshot of await source.listSnapshots(VOLUME)) {
            if (snapshot.name.startsWith('backup-')) assert.ok(stored.has(snapshot.name.slice('backup-'.length)), `${context}: snapshot ${snapshot.name} of an interrupted backup was left behind`)
          }
        } finally {
          await source.close()
        }
      }
      // At least the trials timed from a completed backup completed one (about half of them).
      assert.ok(completed >= TRIALS / 4, `only ${completed} backups completed in ${TRIALS} trials`)
    } finally {
      await rm(storagePath, { recursive: true, force: true })
      await rm(target, { recursive: true, force: true })
    }
  })
})
