// Worker thread of test/review-r30-backup-leases.test.ts: a GalleonFS instance (in memory) in
// another thread of the test's process backs up blockPattern(seed) to a directory target, and says
// (as { event: 'round' }) each time its wait for running collections reads another lease (each
// round of waitForCollections in src/backup/leases.ts), then { result } or { error }.

import { createHash } from 'node:crypto'
import { parentPort, workerData } from 'node:worker_threads'
import { DirectoryBackupTarget } from '../../backends/directory/index.js'
import { GalleonFS } from '../../src/index.js'
import { blockPattern } from './patterns.js'

const { target: path, seed } = workerData as { target: string, seed: number }
const BS = 4096
const BLOCKS = 32

class ObservedTarget extends DirectoryBackupTarget {
  override async getLease (id: string): Promise<Uint8Array | undefined> {
    if ((new Error().stack ?? '').includes('otherLeases')) parentPort?.postMessage({ event: 'round', id })
    return await super.getLease(id)
  }
}

const g = await GalleonFS.open({ inMemory: true })
try {
  const data = blockPattern(BLOCKS, seed, BS)
  await g.createVolume({ name: 'same', sizeBytes: BLOCKS * BS })
  await g.write('same', 0, data)
  const backup = await g.createBackup('same', { target: new ObservedTarget({ path }) })
  parentPort?.postMessage({ result: { id: backup.id, sha256: createHash('sha256').update(data).digest('hex') } })
} catch (err) {
  parentPort?.postMessage({ error: { code: (err as { code?: string }).code ?? 'ERROR', message: (err as Error).stack ?? String(err) } })
} finally {
  await g.close()
}
