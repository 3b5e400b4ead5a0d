// h64: listChangedBlocks on a volume whose deletion is under way. Once the engine has destroyed
// the volume's blocks and before its record is gone (the catalog write), the call attached the
// deleted storage again (src/facade/io.ts, changedBlocks -> volumeBlocks -> engine.attach) and
// answered [] as a success: "no block holds data". createBackup lists the blocks to read this way
// right after taking its snapshot, so a backup whose snapshot was taken just before a forced
// deleteVolume stored no blocks and reported success: the control-plane race fuzz
// (test/h64-control-plane-race.test.ts) found such backups restoring zeros where the volume held
// data (seeds 50 and 230: a backup of a volume force-deleted while the backup ran resolved after
// the deletion, and its restore read zeros for every block).

import { it } from 'node:test'
import assert from 'node:assert/strict'
import { GalleonFS } from '../src/index.js'
import { GalleonError } from '../src/errors.js'
import { withTempDir } from './support/temp-dir.js'

for (const force of [false, true]) {
  it(`listChangedBlocks while deleteVolume({ force: ${force} }) runs answers the volume's blocks or VOLUME_NOT_FOUND, never "no blocks"`, async () => {
    await withTempDir('galleon-h64-changed-', async (storagePath) => {
      const g = await GalleonFS.open({ storagePath })
      try {
        await g.createVolume({ name: 'v', sizeBytes: 4 * 4096 })
        await g.writeBlock('v', 0, new Uint8Array(4096).fill(1))
        let deleting = true
        const deletion = g.deleteVolume('v', { force }).finally(() => { deleting = false })
        const answers = new Map<string, number>()
        // One call per turn of the event loop until the deletion resolves.
        while (deleting) {
          const answer = await g.listChangedBlocks('v').then((blocks) => JSON.stringify(blocks), (err: unknown) => {
            assert.ok(err instanceof GalleonError, String(err))
            return err.code
          })
          answers.set(answer, (answers.get(answer) ?? 0) + 1)
          await new Promise((resolve) => setImmediate(resolve))
        }
        await deletion
        const wrong = [...answers.keys()].filter((answer) => answer !== '[0]' && answer !== 'VOLUME_NOT_FOUND')
        assert.deepEqual(wrong, [], `answers seen while the deletion ran (answer: times): ${JSON.stringify(Object.fromEntries(answers))}`)
        await assert.rejects(g.listChangedBlocks('v'), (err: unknown) => err instanceof GalleonError && err.code === 'VOLUME_NOT_FOUND')
      } finally {
        await g.close()
      }
    })
  })
}
