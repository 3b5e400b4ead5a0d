// Upgrade: storages written by earlier releases open in this one with every byte, snapshot, clone,
// key, policy, class, pool, backup and backup policy intact, and keep working (writes, snapshots,
// a compaction of the old segments, backups on the old chain, a clean scrub).
//
// Each test/fixtures/storage-<rev>-<backend>.tar.gz holds storage-<rev>-<backend>/{storage,backups,
// expected.json}, made with the code of revision <rev> by test/support/h57-make-fixture.ts (its
// header has the exact commands). Fixtures are .tar.gz because .gitignore drops *.log files, and
// segment files (seg-*.log) and LevelDB logs (000003.log) are what a storage consists of; tar also
// keeps master.key at mode 0600, which the internal key provider insists on.
//
// Made on 2026-12-06 with, for each revision REV and backend B in {file, level}:
//   git worktree add --detach /tmp/h57-REV REV && ln -s /work/main/node_modules /tmp/h57-REV/node_modules
//   cd /tmp/h57-REV && H57_REVISION=REV node --import tsx /work/main/test/support/h57-make-fixture.ts \
//     /tmp/h57-REV /tmp/h57-out/storage-REV-B B
//   cd /work/main && tar -C /tmp/h57-out -czf test/fixtures/storage-REV-B.tar.gz storage-REV-B
// REV = 4e601f2 (end of 2026-11-29), 7b1a549 (end of 2026-12-02), c5bec32 (end of 2026-12-04; of
// the three the only one with pools and QoS policies, which came on 2026-12-03, so only its
// fixtures have them). Made on 2026-12-07: REV = 45cc743 (the last release whose file store wrote
// unsalted segments, with marks 'GFR3'; later ones salt every segment). A later release adds its own
// fixtures the same way; this test picks up every storage-*.tar.gz.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { GalleonFS } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { H57_T0, h57Pattern, sha256, type H57Expected } from './support/h57-make-fixture.js'

const BLOCK = 4096
const fixturesDir = join(fileURLToPath(new URL('.', import.meta.url)), 'fixtures')
const fixtures = (await readdir(fixturesDir).catch(() => [] as string[])).filter((name) => /^storage-.+\.tar\.gz$/.test(name)).sort()

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-h57-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

it('has the fixtures of the releases captured so far', () => {
  for (const rev of ['4e601f2', '7b1a549', 'c5bec32', '45cc743']) {
    for (const backend of ['file', 'level']) assert.ok(fixtures.includes(`storage-${rev}-${backend}.tar.gz`), `test/fixtures/storage-${rev}-${backend}.tar.gz is missing`)
  }
})

/** Unpacks a fixture into a fresh directory; returns the paths inside it and what it must hold. */
async function unpack (archive: string): Promise<{ storagePath: string, backupTarget: string, expected: H57Expected }> {
  const into = await mkdtemp(join(root, 'fx-'))
  await promisify(execFile)('tar', ['-xzf', join(fixturesDir, archive), '-C', into])
  const top = archive.replace(/\.tar\.gz$/, '')
  const expected = JSON.parse(await readFile(join(into, top, 'expected.json'), 'utf8')) as H57Expected
  return { storagePath: join(into, top, 'storage'), backupTarget: join(into, top, 'backups'), expected }
}

async function volumeBytes (g: GalleonFS, vol: string | { volume: string, snapshot: string }, length: number): Promise<string> {
  return sha256(await g.read(vol, 0, length))
}

// Releases from before f85ef33 (2026-12-05 12:50) wrote encrypted volumes' backup manifests without
// the HMAC tag this version requires.
const UNTAGGED_BACKUPS = new Set(['4e601f2', '7b1a549', 'c5bec32'])

for (const archive of fixtures) {
  const untaggedBackups = UNTAGGED_BACKUPS.has(archive.replace(/^storage-|-(file|level)\.tar\.gz$/g, ''))
  describe(`upgrade from ${archive}`, () => {
    let storagePath: string
    let backupTarget: string
    let expected: H57Expected
    let now = H57_T0 + 3 * 3600_000 // after the fixture's steps, before the policy's first run (02:00 next day)
    const clock = { now: () => now }
    /** The bytes every volume (and snapshot, as volume@snapshot) must read as, updated as the test writes. */
    const current = new Map<string, string>()
    const open = async (extra: Record<string, unknown> = {}): Promise<GalleonFS> => await GalleonFS.open({
      storagePath, backend: expected.backend as 'file' | 'level', backupTarget, clock,
      ...(expected.passphrase === null ? {} : { passphrase: expected.passphrase }), ...extra
    })
    const checkAll = async (g: GalleonFS, when: string): Promise<void> => {
      for (const [ref, hash] of current) {
        const [volume, snapshot] = ref.split('@') as [string, string | undefined]
        const size = (await g.getVolume(volume)).sizeBytes
        assert.equal(await volumeBytes(g, snapshot === undefined ? volume : { volume, snapshot }, size), hash, `${ref} reads wrong ${when}`)
      }
    }

    before(async () => { ({ storagePath, backupTarget, expected } = await unpack(archive)) })

    it('opens with every volume, snapshot, clone, key, class, pool and QoS policy as written', async () => {
      const g = await open()
      try {
        const listed = (await g.listVolumes()).map((v) => v.name).sort()
        assert.deepEqual(listed, expected.volumes.map((v) => v.name).sort())
        for (const gone of expected.goneVolumes) assert.ok(!listed.includes(gone), `ephemeral volume ${gone} survived`)
        const ids = new Map<string, string>()
        for (const want of expected.volumes) {
          const vol = await g.getVolume(want.name)
          ids.set(want.name, vol.id)
          assert.equal(vol.id, want.id)
          assert.equal(vol.type, want.type)
          assert.equal(vol.sizeBytes, want.sizeBytes)
          assert.equal(vol.storageClass, want.storageClass)
          assert.equal(vol.encrypted, want.encrypted)
          assert.equal(vol.state, 'available', `${want.name} is ${vol.state}`)
          assert.deepEqual({ ...vol.labels }, want.labels)
          assert.equal(await volumeBytes(g, want.name, want.sizeBytes), want.sha256, `${want.name} reads wrong`)
          current.set(want.name, want.sha256)
          // Backups keep the snapshots later backups build on, named backup-<id>: not the fixture's own.
          const snaps = (await g.listSnapshots(want.name)).filter((s) => !s.implicit && !s.name.startsWith('backup-'))
          assert.deepEqual(snaps.map((s) => s.name).sort(), want.snapshots.map((s) => s.name).sort())
          for (const snap of want.snapshots) {
            const stored = await g.getSnapshot(want.name, snap.name)
            assert.equal(stored.id, snap.id)
            assert.equal(stored.sizeBytes, snap.sizeBytes)
            assert.equal(await volumeBytes(g, { volume: want.name, snapshot: snap.name }, snap.sizeBytes), snap.sha256, `${want.name}@${snap.name} reads wrong`)
            current.set(`${want.name}@${snap.name}`, snap.sha256)
          }
          if (want.encrypted) {
            const enc = await g.getVolumeEncryption(want.name)
            assert.equal(enc.encrypted, true)
            assert.equal(enc.unavailable, undefined, `${want.name}'s key is unavailable: ${String(enc.unavailable)}`)
            assert.equal(enc.provider, expected.passphrase === null ? 'internal' : 'passphrase')
          }
        }
        const clone = expected.volumes.find((v) => v.source !== undefined)
        assert.ok(clone?.source !== undefined, 'the fixture has a clone')
        const cloneVol = await g.getVolume(clone.name)
        assert.equal(cloneVol.source?.volumeId, ids.get(clone.source.volume))
        assert.equal(cloneVol.source?.snapshotId, (await g.getSnapshot(clone.source.volume, clone.source.snapshot)).id)
        assert.equal((await g.getVolumeEncryption('secret')).keyVersion, 2, 'the rotated key is current')

        const classes = (await g.listStorageClasses()).map((c) => c.name)
        for (const name of ['fast-local-ssd', 'encrypted-storage']) assert.ok(classes.includes(name), `built-in class ${name} missing`)
        for (const want of expected.storageClasses) {
          const cls = await g.getStorageClass(want.name)
          assert.deepEqual({ ...cls.parameters }, want.parameters)
          assert.equal(cls.reclaimPolicy, want.reclaimPolicy)
          assert.equal(cls.builtIn, false)
        }
        for (const want of expected.pools) {
          const pool = await g.getPool(want.name)
          assert.equal(pool.capacityBytes, want.capacityBytes)
          assert.equal(pool.overcommitRatio, want.overcommitRatio)
          assert.equal(pool.description, want.description)
          const members = expected.volumes.filter((v) => v.pool === want.name)
          assert.equal(pool.volumes, members.length)
          assert.equal(pool.provisionedBytes, members.reduce((sum, v) => sum + v.sizeBytes, 0))
        }
        for (const want of expected.qos) assert.deepEqual((await g.getQoSPolicy(want.volume)).policy, want.policy)
        const audit = await g.verifyAuditLog()
        assert.equal(audit.ok, true, JSON.stringify(audit.problems))
        assert.ok(audit.entries >= expected.auditEntries)
      } finally {
        await g.close()
      }
    })

    const encryptedVolume = (name: string): boolean => expected.volumes.find((v) => v.name === name)?.encrypted === true
    /** Lists, verifies and restores (into a new volume, checked byte for byte) the fixture's backups of plain or encrypted volumes. */
    const checkBackups = async (g: GalleonFS, encrypted: boolean): Promise<void> => {
      const listed = await g.listBackups()
      const wanted = expected.backups.filter((b) => encryptedVolume(b.volume) === encrypted)
      assert.ok(wanted.length > 0, 'the fixture has such backups')
      for (const want of wanted) {
        const backup = listed.find((b) => b.id === want.id)
        assert.ok(backup !== undefined, `backup ${want.id} of ${want.volume} is not listed`)
        assert.equal(backup.strategy, want.strategy)
        assert.equal(backup.baseId ?? null, want.baseId)
        assert.equal(backup.blocks, want.blocks)
        if (encrypted && untaggedBackups) {
          // Manifests from before 2026-12-05 carry no tag: refused until adopted, with the way out named.
          const refused = await g.verifyBackup(want.id)
          assert.equal(refused.ok, false)
          assert.match(refused.problems[0]?.message ?? '', /carries no authentication tag: it was written by a GalleonFS build from before 2026-12-05.*adoptBackup/)
          await assert.rejects(g.restoreBackup(want.id, { name: 'refused' }), { code: 'DECRYPTION_FAILED' })
          const adoption = await g.adoptBackup(want.id)
          assert.deepEqual(adoption.adopted, [want.id])
          assert.ok(adoption.chunksChecked > 0)
          assert.deepEqual((await g.adoptBackup(want.id)).adopted, [], 'adopted once: a second call changes nothing')
        }
        const verified = await g.verifyBackup(want.id)
        assert.equal(verified.ok, true, JSON.stringify(verified.problems))
        const restored = await g.restoreBackup(want.id, { name: `restored-${want.id.slice(0, 8)}` })
        assert.equal(restored.sizeBytes, want.sizeBytes)
        assert.equal(await volumeBytes(g, restored.id, want.sizeBytes), want.sha256, `restore of ${want.volume}'s ${want.strategy} backup reads wrong`)
        assert.equal(restored.encrypted, expected.volumes.find((v) => v.name === want.volume)?.encrypted)
        await g.deleteVolume(restored.id, { force: true })
      }
    }

    // Encrypted backups made before f85ef33 (2026-12-05 12:50) have manifests without the HMAC tag
    // that this version requires: refused as possibly altered until adoptBackup() tags them. Later
    // releases' verify as they are.
    it('verifies and restores encrypted volumes\' backups made by the earlier release', async () => {
      const g = await open()
      try {
        await checkBackups(g, true)
        const lastSecret = expected.backups.filter((b) => b.volume === 'secret').at(-1)
        await g.write('secret', 20 * BLOCK, h57Pattern('after', 20, 1))
        const incremental = await g.createBackup('secret', { strategy: 'incremental' })
        assert.equal(incremental.baseId, lastSecret?.id, 'the new incremental builds on the old release\'s backup of secret')
      } finally {
        await g.close()
      }
    })

    it('lists, verifies and restores plain volumes\' backups, and runs the backup policy on the old chain', async () => {
      const g = await open()
      try {
        await checkBackups(g, false)

        const [policy] = expected.policies
        assert.ok(policy !== undefined)
        const stored = await g.getBackupPolicy(policy.name)
        assert.equal(stored.schedule, policy.schedule)
        assert.equal(stored.strategy, policy.strategy)
        assert.deepEqual({ ...stored.labels }, policy.labels)
        assert.deepEqual(stored.retention, policy.retention)
        assert.equal(stored.nextRunAt, policy.nextRunAt)
        assert.deepEqual(await g.runDueBackupPolicies(), [], 'nothing is due before the first scheduled run')

        // A backup by hand builds on the old release's chain (its last backup of plain).
        await g.write('plain', 60 * BLOCK, h57Pattern('after', 60, 1))
        const plainBytes = await g.read('plain', 0, 64 * BLOCK)
        const lastPlain = expected.backups.filter((b) => b.volume === 'plain').at(-1)
        const incremental = await g.createBackup('plain', { strategy: 'incremental' })
        assert.equal(incremental.strategy, 'incremental')
        assert.equal(incremental.baseId, lastPlain?.id, 'the new incremental builds on the old release\'s last backup of plain')
        assert.equal(incremental.blocks, 1)
        const restored = await g.restoreBackup(incremental.id, { name: 'plain-incremental' })
        assert.equal(sha256(await g.read(restored, 0, 64 * BLOCK)), sha256(plainBytes))
        assert.equal((await g.verifyBackup(incremental.id)).ok, true)
        await g.deleteVolume(restored, { force: true })

        // The policy's first run, past its scheduled time: a full of every volume it selects (a
        // policy's first backup of a volume is a full), then the next day an incremental on it.
        now = Date.parse(policy.nextRunAt as string) + 30_000
        const gold = expected.volumes.filter((v) => Object.entries(policy.labels).every(([k, val]) => v.labels[k] === val)).map((v) => v.id).sort()
        for (const day of [0, 1]) {
          now += day * 24 * 3600_000
          const runs = await g.runDueBackupPolicies()
          assert.equal(runs.length, 1)
          const run = runs[0] as (typeof runs)[number]
          assert.deepEqual(run.errors, [])
          assert.deepEqual(run.backups.map((b) => b.volumeId).sort(), gold)
          for (const taken of run.backups) {
            assert.equal(taken.strategy, day === 0 ? 'full' : 'incremental')
            assert.equal((await g.verifyBackup(taken.id)).ok, true)
          }
        }
        assert.equal((await g.getBackupPolicy(policy.name)).lastRunAt, new Date(Date.parse(policy.nextRunAt as string) + 24 * 3600_000).toISOString())
        current.set('plain', sha256(plainBytes))
      } finally {
        await g.close()
      }
    })

    it('takes new writes and snapshots, deletes an old snapshot, scrubs clean and reopens', async () => {
      let g = await open()
      try {
        for (const want of expected.volumes) {
          await g.write(want.name, 3 * BLOCK + 17, h57Pattern(`new-${want.name}`, 3, 1, 2 * BLOCK))
          await g.writeBlock(want.name, want.sizeBytes / BLOCK - 1, h57Pattern(`new-${want.name}`, 99, 1))
          current.set(want.name, sha256(await g.read(want.name, 0, want.sizeBytes)))
          await g.createSnapshot(want.name, 'after-upgrade')
          current.set(`${want.name}@after-upgrade`, current.get(want.name) as string)
          await g.write(want.name, 0, h57Pattern(`newer-${want.name}`, 0, 1))
          const bytes = await g.read(want.name, 0, want.sizeBytes)
          assert.deepEqual(bytes.subarray(0, BLOCK), h57Pattern(`newer-${want.name}`, 0, 1))
          current.set(want.name, sha256(bytes))
        }
        // snap2 is no clone's source: deleting it frees what only it held, and snap1 still reads right.
        await g.deleteSnapshot('plain', 'snap2')
        current.delete('plain@snap2')
        await checkAll(g, 'after new writes and a snapshot deletion')
        for (const want of expected.volumes) {
          const report = await g.scrub(want.name)
          assert.ok(report.blocksChecked > 0)
          assert.deepEqual(report.badBlocks, [], `scrub of ${want.name}`)
        }
      } finally {
        await g.close()
      }
      g = await open()
      try {
        await checkAll(g, 'after a reopen')
      } finally {
        await g.close()
      }
    })

    it('compacts the segments the old release wrote (file)', { skip: archive.includes('-level') ? 'the level store has no segments of its own' : false }, async () => {
      const blocksDir = join(storagePath, 'blocks')
      const before = (await readdir(blocksDir)).filter((name) => name.startsWith('seg-') && name.endsWith('.log')).sort()
      assert.ok(before.length > 0)
      // Small segments so the old one is sealed by the next writes; a threshold of 0.99 so it is compacted.
      const store = new FileBlockStore({ location: blocksDir, segmentBytes: 64 * 1024, compactionThreshold: 0.99 })
      const g = await open({ blockStore: store, backend: undefined })
      try {
        for (let round = 0; round < 3; round++) {
          for (let b = 0; b < 16; b++) await g.writeBlock('plain', b, h57Pattern('compact', b, round))
        }
        await g.flush()
        current.set('plain', sha256(await g.read('plain', 0, 64 * BLOCK)))
        await store.compact()
        const after = (await readdir(blocksDir)).filter((name) => name.startsWith('seg-') && name.endsWith('.log'))
        assert.ok(!after.includes(before[0] as string), `the old segment ${String(before[0])} was not compacted (segments now: ${after.join(', ')})`)
        await checkAll(g, 'after compaction')
        for (const want of expected.volumes) assert.deepEqual((await g.scrub(want.name)).badBlocks, [], `scrub of ${want.name} after compaction`)
      } finally {
        await g.close()
      }
      const again = await open()
      try {
        await checkAll(again, 'after compaction and a reopen')
      } finally {
        await again.close()
      }
    })
  })
}
