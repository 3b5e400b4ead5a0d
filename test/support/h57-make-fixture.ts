// Builds an upgrade fixture for test/h57-upgrade.test.ts: a storage written by one GalleonFS
// revision with many features in use, plus expected.json describing what it must read back as.
//
// Run it with the code of the revision being captured, from a worktree of that revision whose
// node_modules is this repository's (the library's dependencies did not change versions):
//
//   git worktree add --detach /tmp/h57-<rev> <rev>
//   ln -s /work/main/node_modules /tmp/h57-<rev>/node_modules
//   cd /tmp/h57-<rev> && node --import tsx /work/main/test/support/h57-make-fixture.ts \
//     /tmp/h57-<rev> /tmp/h57-out/storage-<rev>-file file
//   (and the same with `level` as the last argument: that storage uses a passphrase)
//   tar -C /tmp/h57-out -czf test/fixtures/storage-<rev>-file.tar.gz storage-<rev>-file
//
// The script uses only calls every captured revision has; pools and QoS policies only where the
// revision has them (createPool, setQoSPolicy: from 2026-12-03). Every read is checked against a
// model of the bytes written before expected.json is written, so a fixture is never made from a
// revision that already read wrong.

import { createHash } from 'node:crypto'
import { mkdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

/** The passphrase of the `level` fixtures (the `file` ones use the internal key provider, master.key). */
export const H57_PASSPHRASE = 'h57 upgrade fixture passphrase'
/** Fixture time: every call runs on a clock that starts here and moves by a minute per step. */
export const H57_T0 = Date.parse('2026-12-06T10:00:00.000Z')
const BLOCK = 4096

/** Block contents that compress (a fixture is committed) yet differ per volume, block and version. */
export function h57Pattern (tag: string, block: number, version: number, length = BLOCK): Uint8Array {
  const seed = createHash('sha256').update(`${tag}/${block}/${version}`).digest()
  const out = new Uint8Array(length)
  for (let i = 0; i < length; i++) out[i] = (seed[i % 32] as number) ^ (i >> 8)
  return out
}

export function sha256 (data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex')
}

/** What the test checks a fixture against (written to expected.json). */
export interface H57Expected {
  revision: string
  backend: string
  passphrase: string | null
  features: { pools: boolean, qos: boolean }
  volumes: Array<{
    name: string, id: string, type: string, sizeBytes: number, storageClass: string, encrypted: boolean,
    labels: Record<string, string>, sha256: string, pool?: string, source?: { volume: string, snapshot: string },
    snapshots: Array<{ name: string, id: string, sizeBytes: number, sha256: string }>
  }>
  goneVolumes: string[]
  storageClasses: Array<{ name: string, parameters: Record<string, string>, reclaimPolicy: string }>
  pools: Array<{ name: string, capacityBytes: number, overcommitRatio: number, description: string }>
  qos: Array<{ volume: string, policy: unknown }>
  backups: Array<{ id: string, volume: string, strategy: string, baseId: string | null, blocks: number, sha256: string, sizeBytes: number }>
  policies: Array<{ name: string, schedule: string, strategy: string, labels: Record<string, string>, retention: unknown, nextRunAt: string | null }>
  auditEntries: number
}

async function main (): Promise<void> {
  const [revisionDir, outDir, backend = 'file'] = process.argv.slice(2)
  if (revisionDir === undefined || outDir === undefined || (backend !== 'file' && backend !== 'level')) {
    throw new Error('usage: h57-make-fixture.ts <revision worktree> <output directory> <file|level>')
  }
  const api = await import(pathToFileURL(join(revisionDir, 'src', 'index.ts')).href) as any
  const { GalleonFS } = api
  await rm(outDir, { recursive: true, force: true })
  await mkdir(outDir, { recursive: true })
  const storagePath = join(outDir, 'storage')
  const backupTarget = join(outDir, 'backups')
  let now = H57_T0
  const tick = (): void => { now += 60_000 }
  const passphrase = backend === 'level' ? H57_PASSPHRASE : undefined
  const g = await GalleonFS.open({ storagePath, backend, backupTarget, clock: { now: () => now }, ...(passphrase === undefined ? {} : { passphrase }) })

  const model = new Map<string, Uint8Array>()
  const snapshots = new Map<string, Array<{ name: string, bytes: Uint8Array }>>()
  const sources = new Map<string, { volume: string, snapshot: string }>()
  const pools = new Map<string, string>()
  const writeModel = async (name: string, offset: number, data: Uint8Array): Promise<void> => {
    await g.write(name, offset, data)
    ;(model.get(name) as Uint8Array).set(data, offset)
  }
  const writeBlocks = async (name: string, tag: string, from: number, count: number, version: number): Promise<void> => {
    for (let b = from; b < from + count; b++) await writeModel(name, b * BLOCK, h57Pattern(tag, b, version))
  }
  const create = async (options: Record<string, unknown>): Promise<void> => {
    tick()
    await g.createVolume(options)
    model.set(options.name as string, new Uint8Array(options.sizeBytes as number))
    snapshots.set(options.name as string, [])
  }
  const snapshot = async (name: string, snap: string): Promise<void> => {
    tick()
    await g.createSnapshot(name, snap)
    ;(snapshots.get(name) as Array<{ name: string, bytes: Uint8Array }>).push({ name: snap, bytes: (model.get(name) as Uint8Array).slice() })
  }

  const features = { pools: typeof g.createPool === 'function', qos: typeof g.setQoSPolicy === 'function' }
  const storageClasses: H57Expected['storageClasses'] = [
    { name: 'h57-bulk', parameters: { disk_type: 'hdd', tier: 'cold' }, reclaimPolicy: 'Retain' },
    { name: 'h57-secure', parameters: { encryption: 'true', replication: '1' }, reclaimPolicy: 'Delete' }
  ]
  for (const cls of storageClasses) { tick(); await g.createStorageClass({ name: cls.name, provisioner: 'galleonfs.io/local', parameters: cls.parameters, reclaim_policy: cls.reclaimPolicy }) }
  const poolSpecs = features.pools ? [{ name: 'h57-pool', capacityBytes: 8 * 1024 * 1024, overcommitRatio: 1.5, description: 'upgrade fixture pool' }] : []
  for (const pool of poolSpecs) { tick(); await g.createPool(pool) }

  // Backups go to the instance's default target (backupTarget), so they move with the fixture.
  const backups: H57Expected['backups'] = []
  const backup = async (name: string, strategy: string): Promise<void> => {
    tick()
    const info = await g.createBackup(name, { strategy })
    backups.push({ id: info.id, volume: name, strategy: info.strategy, baseId: info.baseId ?? null, blocks: info.blocks, sha256: sha256(model.get(name) as Uint8Array), sizeBytes: (model.get(name) as Uint8Array).byteLength })
  }
  // A persistent volume with two snapshots between overwrites, an unaligned write and a trim.
  await create({ name: 'plain', sizeBytes: 64 * BLOCK, labels: { tier: 'gold', app: 'h57' } })
  await writeBlocks('plain', 'plain', 0, 16, 1)
  await writeModel('plain', 20 * BLOCK + 123, new TextEncoder().encode('unaligned write across a block edge '.repeat(200)))
  await snapshot('plain', 'snap1')
  await writeBlocks('plain', 'plain', 2, 6, 2)
  tick()
  await g.trim('plain', 9 * BLOCK + 100, 4 * BLOCK) // partial edges zeroed, blocks 10-12 unmapped
  ;(model.get('plain') as Uint8Array).fill(0, 9 * BLOCK + 100, 13 * BLOCK + 100)
  await snapshot('plain', 'snap2')
  await writeBlocks('plain', 'plain', 40, 4, 3)

  // Other types: shared stays (reverted to a snapshot), ephemeral is deleted at close.
  await create({ name: 'shared', type: 'shared', sizeBytes: 32 * BLOCK, accessModes: ['ReadWriteMany'] })
  await writeBlocks('shared', 'shared', 0, 4, 1)
  await snapshot('shared', 'good')
  await writeBlocks('shared', 'shared', 2, 4, 2)
  tick()
  await g.restoreSnapshot('shared', 'good')
  model.set('shared', (snapshots.get('shared') as Array<{ bytes: Uint8Array }>)[0]!.bytes.slice())
  await writeBlocks('shared', 'shared', 8, 1, 3)
  await create({ name: 'eph', type: 'ephemeral', sizeBytes: 16 * BLOCK })
  await writeBlocks('eph', 'eph', 0, 2, 1)

  // Expanded: data before and after the old end.
  await create({ name: 'grown', sizeBytes: 16 * BLOCK })
  await writeBlocks('grown', 'grown', 12, 4, 1)
  tick()
  await g.expandVolume('grown', 48 * BLOCK)
  const grown = new Uint8Array(48 * BLOCK)
  grown.set(model.get('grown') as Uint8Array)
  model.set('grown', grown)
  await writeBlocks('grown', 'grown', 30, 3, 1)
  tick()
  await g.createSnapshot('grown', 'dropped') // deleted again: what only it held is freed
  await writeBlocks('grown', 'grown', 12, 2, 2)
  tick()
  await g.deleteSnapshot('grown', 'dropped')

  // A clone of plain@snap1, then written.
  tick()
  await g.cloneVolume({ volume: 'plain', snapshot: 'snap1' }, 'plain-clone')
  model.set('plain-clone', (snapshots.get('plain') as Array<{ bytes: Uint8Array }>)[0]!.bytes.slice())
  snapshots.set('plain-clone', [])
  sources.set('plain-clone', { volume: 'plain', snapshot: 'snap1' })
  await writeBlocks('plain-clone', 'clone', 1, 2, 1)

  // Encrypted: the built-in class and a custom one; a key rotation; a snapshot between writes.
  await create({ name: 'secret', sizeBytes: 32 * BLOCK, storageClass: 'encrypted-storage', replicas: 1, labels: { tier: 'gold' } })
  await writeBlocks('secret', 'secret', 0, 6, 1)
  await snapshot('secret', 'sealed')
  await writeBlocks('secret', 'secret', 3, 2, 2)
  tick()
  await g.rotateVolumeKey('secret', { wait: true })
  await writeBlocks('secret', 'secret', 8, 2, 3)
  await create({ name: 'secure2', sizeBytes: 16 * BLOCK, storageClass: 'h57-secure' })
  await writeBlocks('secure2', 'secure2', 0, 3, 1)
  // Taken before the KEK rotation: its manifest's backup key is wrapped by the key retired next.
  await backup('secret', 'full')
  tick()
  if (passphrase === undefined) await g.rotateKeyEncryptionKey() // master.key then holds a retired key too

  // Custom class, pool and QoS.
  await create({ name: 'bulk', sizeBytes: 16 * BLOCK, storageClass: 'h57-bulk', labels: { team: 'archive' } })
  await writeBlocks('bulk', 'bulk', 5, 2, 1)
  const qos: Array<{ volume: string, policy: unknown }> = []
  if (features.pools) {
    await create({ name: 'pooled', sizeBytes: 64 * BLOCK, pool: 'h57-pool' })
    pools.set('pooled', 'h57-pool')
    await writeBlocks('pooled', 'pooled', 0, 2, 1)
  }
  if (features.qos) {
    tick()
    const policy = { name: 'h57-gold', limits: { iops: 50_000, throughputMBps: 500 }, weight: 4 }
    await g.setQoSPolicy('bulk', policy)
    qos.push({ volume: 'bulk', policy: (await g.getQoSPolicy('bulk')).policy })
  }

  // Backups: full + incremental of plain, a full of the encrypted volume (above), and a policy.
  await backup('plain', 'full')
  await writeBlocks('plain', 'plain', 50, 3, 4)
  await backup('plain', 'incremental')
  tick()
  await g.createBackupPolicy({ name: 'h57-nightly', schedule: '0 2 * * *', strategy: 'incremental', retention: { daily: 7, weekly: 2 }, labels: { tier: 'gold' } })

  // Check everything the old code reads back against the model before recording it.
  for (const [name, bytes] of model) {
    const read = await g.read(name, 0, bytes.byteLength)
    if (sha256(read) !== sha256(bytes)) throw new Error(`${name} reads wrong at this revision already`)
    for (const snap of snapshots.get(name) ?? []) {
      const back = await g.read({ volume: name, snapshot: snap.name }, 0, snap.bytes.byteLength)
      if (sha256(back) !== sha256(snap.bytes)) throw new Error(`${name}@${snap.name} reads wrong at this revision already`)
    }
  }
  for (const b of backups) if ((await g.verifyBackup(b.id)).ok !== true) throw new Error(`backup ${b.id} does not verify`)

  const volumes: H57Expected['volumes'] = []
  for (const [name, bytes] of model) {
    if (name === 'eph') continue
    const vol = await g.getVolume(name)
    const snaps = (await g.listSnapshots(name)).filter((s: { implicit: boolean }) => !s.implicit)
    volumes.push({
      name, id: vol.id, type: vol.type, sizeBytes: vol.sizeBytes, storageClass: vol.storageClass, encrypted: vol.encrypted,
      labels: { ...vol.labels }, sha256: sha256(bytes),
      ...(pools.has(name) ? { pool: pools.get(name) } : {}),
      ...(sources.has(name) ? { source: sources.get(name) } : {}),
      snapshots: (snapshots.get(name) ?? []).map((snap) => {
        const stored = snaps.find((s: { name: string }) => s.name === snap.name)
        if (stored === undefined) throw new Error(`snapshot ${name}@${snap.name} is not listed`)
        return { name: snap.name, id: stored.id, sizeBytes: stored.sizeBytes, sha256: sha256(snap.bytes) }
      })
    })
  }
  const policy = await g.getBackupPolicy('h57-nightly')
  const audit = await g.queryAuditLog()
  const expected: H57Expected = {
    revision: process.env.H57_REVISION ?? 'unknown',
    backend,
    passphrase: passphrase ?? null,
    features,
    volumes,
    goneVolumes: ['eph'],
    storageClasses,
    pools: poolSpecs,
    qos,
    backups,
    policies: [{ name: policy.name, schedule: policy.schedule, strategy: policy.strategy, labels: { ...policy.labels }, retention: policy.retention, nextRunAt: policy.nextRunAt }],
    auditEntries: (Array.isArray(audit) ? audit : audit.entries).length
  }
  await g.close()
  // Made again at open when there is room; 8 MiB of zeros need not be in a committed fixture.
  await rm(join(storagePath, 'reserved-space'), { force: true })
  await writeFile(join(outDir, 'expected.json'), JSON.stringify(expected, null, 2) + '\n')
  console.log(`fixture ${outDir}: ${volumes.length} volumes, ${backups.length} backups, features ${JSON.stringify(features)}`)
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  await main()
}
