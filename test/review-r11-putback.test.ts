// Review r11 of commit 65fc778: a node killed (SIGKILL) between marking a volume replicated and
// its cluster record (test/crash/review-r11-child.ts holds the record write) gets it back at its
// next join. Checked here: the state put back after an encrypting first step, and a node opened
// without a cluster first (the class put back must still exist).

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS } from '../src/index.js'
import { MemoryCoordinatorCluster, MemoryNetwork, MemoryTransport } from '../backends/memory/index.js'
import { killAfterReady } from './crash/support.js'
import { BLOCKS, VOLUME, blockOf, makeClasses } from './crash/review-r11-child.js'
import { RECORD_PREFIX } from '../src/replication/records.js'
import { until } from './support/wait.js'

const CHILD = fileURLToPath(new URL('./crash/review-r11-child.ts', import.meta.url))
const dirs: string[] = []
const opened: GalleonFS[] = []
after(async () => {
  await Promise.allSettled(opened.map(async (g) => await g.close()))
  await Promise.allSettled(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true })))
})

async function killedMidConversion (target: string): Promise<string> {
  const storagePath = await mkdtemp(join(tmpdir(), 'galleon-r11-putback-'))
  dirs.push(storagePath)
  const run = await killAfterReady(CHILD, [storagePath, target], 0)
  assert.ok(run.killed && run.lines.includes('written') && run.lines.some((l) => l.startsWith('ready')), `the child was killed with its record write held: ${run.lines.join(' | ')} ${run.exit.stderr.slice(0, 2000)}`)
  return storagePath
}

function clusterOf (network: MemoryNetwork, coordinators: MemoryCoordinatorCluster, id: string): { nodeId: string, transport: MemoryTransport, coordinator: ReturnType<MemoryCoordinatorCluster['coordinator']>, leaseTtlMs: number } {
  return { nodeId: id, transport: new MemoryTransport({ network, nodeId: id }), coordinator: coordinators.coordinator(), leaseTtlMs: 1000 }
}

describe('review r11: a volume put back after a node stopped mid-conversion', () => {
  it('after an encrypting first step: put back as a 1-copy encrypted volume of the new class with its data, and the same call again makes it replicated', { timeout: 60_000 }, async () => {
    const storagePath = await killedMidConversion('secret-pair')
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await GalleonFS.open({ storagePath, cluster: clusterOf(network, coordinators, 'n1') })
    opened.push(n1)
    const volume = await n1.getVolume(VOLUME)
    assert.equal(volume.replicas, 1)
    assert.equal(volume.encrypted, true, 'laid out encrypted by step 1')
    assert.equal(volume.storageClass, 'secret-pair', 'the class of step 1 (its layout), one copy')
    for (let i = 0; i < BLOCKS; i++) assert.deepEqual(await n1.readBlock(VOLUME, i), blockOf(i), `block ${i}`)

    const n2Path = await mkdtemp(join(tmpdir(), 'galleon-r11-putback-n2-'))
    dirs.push(n2Path)
    const n2 = await GalleonFS.open({ storagePath: n2Path, cluster: clusterOf(network, coordinators, 'n2') })
    opened.push(n2)
    await makeClasses(n2)
    await until('both nodes see each other', () => [n1, n2].every((g) => g.cluster?.members.filter((m) => m.healthy).length === 2))
    const replicated = await n1.migrateVolume(VOLUME, { storageClass: 'secret-pair' })
    assert.equal(replicated.storageClass, 'secret-pair')
    assert.equal(replicated.replicas, 2)
    await until('two copies in sync', async () => (await n1.replicationStatus(VOLUME)).inSync.length === 2)
    const copy = await n2.getVolume(VOLUME)
    assert.equal(copy.encrypted, true)
    for (let i = 0; i < BLOCKS; i++) assert.deepEqual(await n2.readBlock(VOLUME, i), blockOf(i), `block ${i} through n2`)
  })

  it('opened without a cluster first: the class it is put back to cannot be deleted meanwhile (deleteStorageClass refuses it with BUSY)', { timeout: 60_000 }, async () => {
    const storagePath = await killedMidConversion('double')
    const alone = await GalleonFS.open({ storagePath })
    const deleted = await alone.deleteStorageClass('single').then(() => undefined, (err: { code?: string }) => err)
    await alone.close()
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const n1 = await GalleonFS.open({ storagePath, cluster: clusterOf(network, coordinators, 'n1') })
    opened.push(n1)
    const volume = await n1.getVolume(VOLUME)
    assert.equal(volume.replicas, 1, 'put back')
    const classes = (await n1.listStorageClasses()).map((c) => c.name)
    assert.ok(classes.includes(volume.storageClass), `the volume's class ${volume.storageClass} exists (classes: ${classes.join(', ')}); deleteStorageClass('single') answered ${deleted === undefined ? 'with success' : deleted.code}`)
    assert.equal(deleted?.code, 'BUSY')
  })
})

describe('review r11: a join whose first read of the record fails', () => {
  it('the marked volume is not left an unrecorded copy with advice to force-delete it: the join fails (try again) or the volume is put back', { timeout: 60_000 }, async () => {
    const storagePath = await killedMidConversion('double')
    const network = new MemoryNetwork()
    const coordinators = new MemoryCoordinatorCluster()
    const options = clusterOf(network, coordinators, 'n1')
    let failedOnce = false
    const coordinator = new Proxy(options.coordinator, {
      get: (target, name) => {
        const value = Reflect.get(target, name, target) as unknown
        if (typeof value !== 'function') return value
        if (name !== 'get') return value.bind(target)
        return async (key: string, ...rest: unknown[]) => {
          if (key.startsWith(RECORD_PREFIX) && !failedOnce) {
            failedOnce = true
            throw new Error('coordinator unreachable for a moment')
          }
          return await (value as (...args: unknown[]) => Promise<unknown>).call(target, key, ...rest)
        }
      }
    })
    const errors: string[] = []
    const g = await GalleonFS.open({ storagePath })
    opened.push(g)
    g.on('replication:error', (event: { message: string }) => { errors.push(event.message) })
    const joined = await g.joinCluster({ ...options, coordinator }).then(() => true, () => false)
    assert.ok(failedOnce, 'the first read failed')
    if (!joined) await g.joinCluster(clusterOf(network, coordinators, 'n1'))
    const volume = await g.getVolume(VOLUME)
    assert.equal(volume.replicas, 1, `put back once a join could read the coordinator (joined at first try: ${joined})`)
    for (let i = 0; i < BLOCKS; i++) assert.deepEqual(await g.readBlock(VOLUME, i), blockOf(i), `block ${i}`)
    assert.deepEqual(errors.filter((m) => m.includes('force')), [], 'no advice to force-delete its data')
  })
})
