// Review r57: deleteBackup killed with SIGKILL part-way, in the process that holds the backed-up
// volume. Whatever the point, the next open leaves no snapshot `backup-<id>` of a backup that is
// gone from the target (nothing would ever delete it: backups free only the snapshots of the
// backups they list, and it pins the volume's old block versions), and every backup still listed
// restores as its point in time.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS } from '../src/index.js'
import { scriptArgs, childExit } from './support/child-script.js'
import { until } from './support/wait.js'

const BS = 4096

let root: string
let count = 0
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-r57-delete-kill-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })
const place = (): string => join(root, String(count++))

/** Runs the fixture until its deletion stops at the first manifest (see there), then kills it. */
async function killedDeletion (storagePath: string, targetPath: string, backupId: string, when: 'before' | 'after', force: boolean): Promise<void> {
  const script = fileURLToPath(new URL('./fixtures/delete-backup-and-hang.ts', import.meta.url))
  const child = spawn(process.execPath, [...scriptArgs(script), storagePath, targetPath, backupId, when, force ? 'force' : 'plain'], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
  try {
    await until('the child\'s deletion to stop at a manifest', () => out.includes('holding') || child.exitCode !== null, 60_000)
    assert.ok(out.includes('holding'), `the child stopped at the manifest (it printed ${JSON.stringify(out)})`)
  } finally {
    child.kill('SIGKILL')
    await childExit(child)
  }
}

describe('review r57: deleteBackup killed part-way', () => {
  for (const [when, force] of [['after', false], ['after', true], ['before', false], ['before', true]] as const) {
    it(`killed ${when} its first manifest is removed${force ? ' (force, a chain)' : ''}: no snapshot of a gone backup is left, every listed backup restores`, async () => {
      const storagePath = place()
      const target = place()
      let g = await GalleonFS.open({ storagePath, backupTarget: target })
      const images: Map<string, Buffer> = new Map()
      let doomed: string
      try {
        await g.createVolume({ name: 'v', sizeBytes: 256 * BS })
        const ids: string[] = []
        for (let step = 0; step < 3; step++) {
          await g.write('v', step * 64 * BS, new Uint8Array(8 * BS).fill(step + 1))
          const backup = await g.createBackup('v', { strategy: step === 0 ? 'full' : 'incremental' })
          ids.push(backup.id)
          images.set(backup.id, Buffer.from(await g.read('v', 0, 256 * BS)))
        }
        // Without force the newest (nothing builds on it); with force the full, its chain newest first.
        doomed = force ? ids[0] as string : ids[2] as string
      } finally { await g.close() }

      await killedDeletion(storagePath, target, doomed, when, force)

      g = await GalleonFS.open({ storagePath, backupTarget: target })
      try {
        const listed = new Set((await g.listBackups('v')).map((b) => b.id))
        const left = (await g.listSnapshots('v')).map((s) => s.name).filter((name) => name.startsWith('backup-') && !listed.has(name.slice('backup-'.length)))
        assert.deepEqual(left, [], `snapshots of backups gone from the target: ${left.join(', ')}`)
        for (const id of listed) {
          const restored = await g.restoreBackup(id, { name: `r-${id.slice(0, 8)}` })
          assert.ok(Buffer.from(await g.read(restored.id, 0, 256 * BS)).equals(images.get(id) as Buffer), `backup ${id} restores as its point in time`)
        }
        // The deletion, asked again, completes.
        if (listed.has(doomed)) await g.deleteBackup(doomed, { force })
        assert.equal((await g.listBackups('v')).some((b) => b.id === doomed), false)
      } finally { await g.close() }
    })
  }
})
