// `galleonfs --demo-mode [--setup-defaults] [--storage-path DIR]`: a guided tour of the library on
// the embedded default (classic-level metadata, the file block store). It exercises volumes,
// writes with write concerns, snapshots, clones, expansion, backups (full, incremental, verify,
// restore), encryption at rest and metrics, checks each result, and prints what it did. Without
// --storage-path it works in a temporary directory that it removes at the end; with one, it leaves
// what it made there (under names that do not clash with what is already there).

import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { BackupStrategy, GalleonFS, WriteConcern, formatSize } from '../src/index.js'

export interface DemoOptions {
  /** Work here and keep the results; default: a temporary directory, removed afterwards. */
  storagePath?: string
  /** Also set up what a daemon would have: a storage class and a nightly backup policy. */
  setupDefaults?: boolean
  /** Where the report goes, a line at a time (default stdout). */
  print?: (line: string) => void
}

const MiB = 1024 * 1024

/** A failed check: the demo stops and says which. */
class DemoFailure extends Error {}

function check (ok: boolean, what: string): void {
  if (!ok) throw new DemoFailure(`check failed: ${what}`)
}

const digest = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex').slice(0, 16)

/** Every file under `dir` holding `needle`. */
async function filesContaining (dir: string, needle: Buffer): Promise<string[]> {
  const found: string[] = []
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue
    const path = join(entry.parentPath, entry.name)
    if ((await readFile(path)).includes(needle)) found.push(path)
  }
  return found
}

/** Runs the tour; resolves when every step passed, rejects with the step that did not. */
export async function runDemo (options: DemoOptions = {}): Promise<void> {
  const print = options.print ?? ((line: string) => { process.stdout.write(line + '\n') })
  const temporary = options.storagePath === undefined
  const storagePath = resolve(options.storagePath ?? await mkdtemp(join(tmpdir(), 'galleonfs-demo-')))
  const backupTarget = join(storagePath, 'demo-backups')
  let step = 0
  const say = (title: string, ...details: string[]): void => {
    print(`${String(++step).padStart(2)}. ${title}`)
    for (const line of details) print(`      ${line}`)
  }
  print(`GalleonFS demo in ${storagePath}${temporary ? ' (temporary, removed at the end)' : ''}`)
  let g: GalleonFS | undefined
  try {
    g = await GalleonFS.open({ storagePath, backupTarget })
    const taken = new Set((await g.listVolumes()).map((v) => v.name))
    const fresh = (name: string): string => {
      let candidate = name
      for (let n = 2; taken.has(candidate); n++) candidate = `${name}-${n}`
      taken.add(candidate)
      return candidate
    }
    say('Opened the embedded default', `backend ${g.backend}, block size ${g.blockSize} bytes, metadata in classic-level`)

    const classes = await g.listStorageClasses()
    say('Storage classes', ...classes.map((c) => `${c.name}: encryption ${c.parameters.encryption ?? 'false'}, reclaim ${c.reclaimPolicy}${c.builtIn === true ? ' (built in)' : ''}`))
    if (options.setupDefaults === true) {
      const details: string[] = []
      if (!classes.some((c) => c.name === 'demo-bulk')) {
        await g.createStorageClass({ name: 'demo-bulk', provisioner: 'galleonfs.io/local', parameters: { replication: '1', encryption: 'false' }, reclaimPolicy: 'Delete' })
        details.push('storage class demo-bulk (one replica, not encrypted, deleted with its volumes)')
      } else {
        details.push('storage class demo-bulk is already there')
      }
      if (!(await g.listBackupPolicies()).some((p) => p.name === 'demo-nightly')) {
        const policy = await g.createBackupPolicy({ name: 'demo-nightly', schedule: '0 2 * * *', strategy: 'incremental', labels: { demo: 'true' }, retention: { daily: 7, weekly: 4 } })
        details.push(`backup policy demo-nightly: incremental at 02:00 UTC for volumes labelled demo=true, keeping 7 daily and 4 weekly; next run ${policy.nextRunAt ?? 'never'}`)
      } else {
        details.push('backup policy demo-nightly is already there')
      }
      say('Set up defaults', ...details)
    }

    const web = await g.createVolume({ name: fresh('demo-web'), sizeBytes: '64M', storageClass: 'fast-local-ssd', labels: { demo: 'true' } })
    say('Created a volume', `${web.name}: ${formatSize(web.sizeBytes)}, class ${web.storageClass}, id ${web.id}`)

    const data = randomBytes(8 * MiB)
    let began = performance.now()
    await g.write(web.id, 0, data, WriteConcern.WriteDurable)
    const writeMs = performance.now() - began
    began = performance.now()
    const back = await g.read(web.id, 0, data.byteLength)
    const readMs = performance.now() - began
    check(digest(back) === digest(data), 'the 8 MiB read back equal what was written')
    say('Wrote 8 MiB with WriteDurable and read it back',
      `write ${(8 / (writeMs / 1000)).toFixed(0)} MiB/s, read ${(8 / (readMs / 1000)).toFixed(0)} MiB/s, sha256 ${digest(data)} both ways`,
      `thin provisioning: ${formatSize(await g.getVolumeUsage(web.id))} allocated of ${formatSize(web.sizeBytes)}`)

    const snapshot = await g.createSnapshot(web.id, 'before-change')
    const change = Buffer.alloc(MiB, 0x5a)
    await g.write(web.id, 0, change, WriteConcern.WriteDurable)
    const inSnapshot = await g.read({ volume: web.id, snapshot: snapshot.id }, 0, MiB)
    check(digest(inSnapshot) === digest(data.subarray(0, MiB)), 'the snapshot kept the first MiB as it was')
    check(digest(await g.read(web.id, 0, MiB)) === digest(change), 'the volume holds the new first MiB')
    say('Took a snapshot, then changed the volume', `snapshot ${snapshot.name} still reads the old first MiB (sha256 ${digest(inSnapshot)}); the volume reads the new one`)

    const clone = await g.cloneVolume({ volume: web.id, snapshot: snapshot.id }, fresh('demo-web-clone'))
    check(digest(await g.read(clone.id, 0, data.byteLength)) === digest(data), 'the clone holds the snapshot\'s data')
    await g.write(clone.id, 0, Buffer.alloc(4096, 1))
    check(digest(await g.read({ volume: web.id, snapshot: snapshot.id }, 0, 4096)) === digest(data.subarray(0, 4096)), 'writing the clone left the snapshot alone')
    say('Cloned the snapshot (copy-on-write)', `${clone.name} reads the snapshot's 8 MiB and takes its own writes; the snapshot is unchanged`)

    const grown = await g.expandVolume(web.id, '128M')
    check(grown.sizeBytes === 128 * MiB, 'the volume is 128 MiB')
    say('Expanded the volume online', `${web.name}: ${formatSize(web.sizeBytes)} -> ${formatSize(grown.sizeBytes)}`)

    const full = await g.createBackup(web.id, { strategy: BackupStrategy.Full })
    await g.write(web.id, 100 * MiB, randomBytes(2 * MiB), WriteConcern.WriteDurable)
    const incremental = await g.createBackup(web.id, { strategy: BackupStrategy.Incremental })
    check(incremental.baseId === full.id, 'the incremental backup builds on the full one')
    const verified = await g.verifyBackup(incremental.id)
    check(verified.ok, 'the incremental backup verifies')
    const restored = await g.restoreBackup(incremental.id, { name: fresh('demo-web-restored') })
    const live = await g.read(web.id, 0, grown.sizeBytes)
    check(digest(await g.read(restored.id, 0, grown.sizeBytes)) === digest(live), 'the restored volume equals the live one')
    say('Backed up and restored',
      `full ${full.id.slice(0, 8)}: ${full.blocks} blocks, ${formatSize(full.storedBytes)} stored`,
      `incremental ${incremental.id.slice(0, 8)}: ${incremental.blocks} changed blocks, ${formatSize(incremental.storedBytes)} stored`,
      `verified (${verified.chunksChecked} chunks); restored into ${restored.name}, identical to ${web.name} (sha256 ${digest(live)})`)

    const secure = await g.createVolume({ name: fresh('demo-secure'), sizeBytes: '16M', storageClass: 'encrypted-storage', replicas: 1 })
    const marker = Buffer.from('GALLEONFS-DEMO-SECRET-'.repeat(200).slice(0, 4096))
    await g.write(secure.id, 0, marker, WriteConcern.WriteDurable)
    await g.flush(secure.id)
    check(Buffer.from(await g.read(secure.id, 0, marker.byteLength)).equals(marker), 'the encrypted volume reads back its data')
    // The scan reads every file: only in the demo's own directory (a user's storage path may be huge).
    let scanned = 'its text is readable through the library'
    if (temporary) {
      const leaks = await filesContaining(storagePath, Buffer.from('GALLEONFS-DEMO-SECRET-'))
      check(leaks.length === 0, `the secret text is nowhere on disk in the clear (found in ${leaks.join(', ')})`)
      scanned += ' and appears in no file under the storage path'
    }
    const encryption = await g.getVolumeEncryption(secure.id)
    say('Encrypted a volume at rest', `${secure.name}: ${encryption.algorithm}, data key version ${encryption.keyVersion ?? '-'}, wrapped by the ${encryption.provider ?? '-'} key provider`, scanned)

    const metrics = (await g.metricsText()).split('\n').filter((line) => line.startsWith('galleonfs_volumes ') || new RegExp(`^galleonfs_volume_(write|read)_(ops|bytes)_total\\{[^}]*volume_name="${web.name}"`).test(line))
    say('Metrics (Prometheus text, a few lines)', ...metrics.slice(0, 8))
    print(`All ${step} steps passed.${temporary ? '' : ` The volumes stay in ${storagePath}; backups are in ${backupTarget}.`}`)
  } finally {
    await g?.close()
    if (temporary) await rm(storagePath, { recursive: true, force: true })
  }
}
