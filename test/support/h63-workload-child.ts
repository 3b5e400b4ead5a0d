// Child process of the power-loss test (test/h63-power-loss.test.ts): opens a GalleonFS storage on
// the power-loss FUSE file system and runs one workload until the parent kills it, reporting every
// issue and acknowledgement on stdout as it happens (written synchronously, so a SIGKILL loses
// nothing already reported).
//
// Usage: node h63-workload-child.js <storagePath> <file|level> <register|metadata|backup> <seed> <seqBase> <backupTarget>
//
// Lines:
//   ready                                 open, workload starting
//   W <vol> <block> <seq> <D|A>           writeBlock issued (payload: registerPayload(vol, block, seq, writer))
//   ack <vol> <block> <seq>               a WriteDurable write resolved
//   acka <vol> <block> <seq>              a WriteAcknowledged write resolved
//   F <seq> / flushed <seq>               flush(vol) issued / resolved
//   I <op> <args...> / A <op> <args...>   a metadata change issued / resolved (create, expand, snap,
//                                         delsnap, rotate, backup)
//   error <message>                       something failed; exit code 3

import { GalleonFS, WriteConcern, BackupStrategy, isGalleonError } from '../../src/index.js'
import { reportLine, runAsChild } from '../crash/support.js'
import { seededRandom } from '../../src/seeded-random.js'

export const BLOCK = 4096
/** File store options of every workload: small segments, eager compaction, so segments are made, sealed, renamed and deleted during a run. */
export const FILE_OPTIONS = { segmentBytes: 64 * 1024, compactionThreshold: 0.6 }
const MAGIC = 0x3336_4847 // 'GH63'

/** Tag of a volume name, carried in each block so a block cannot move between volumes unseen. */
export function nameTag (name: string): number {
  let hash = 0x811c9dc5
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193) >>> 0
  return hash
}

/** Block `block` of volume `name` written as write `seq` (by `writer`, or phase of a backup). */
export function registerPayload (name: string, block: number, seq: number, writer: number): Uint8Array {
  const out = new Uint8Array(BLOCK)
  const view = new DataView(out.buffer)
  view.setUint32(0, MAGIC, true)
  view.setUint32(4, nameTag(name), true)
  view.setUint32(8, block, true)
  view.setUint32(12, seq, true)
  view.setUint32(16, writer, true)
  let x = (Math.imul(nameTag(name) ^ block, 0x9e3779b1) ^ Math.imul(seq, 0x85ebca6b) ^ writer) >>> 0 || 1
  for (let at = 20; at < BLOCK; at += 4) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5
    view.setUint32(at, x >>> 0, true)
  }
  return out
}

/** What a block read back holds. */
export type Decoded = { kind: 'zero' } | { kind: 'data', seq: number, writer: number } | { kind: 'garbage', reason: string }

export function decodeRegister (name: string, block: number, bytes: Uint8Array): Decoded {
  if (bytes.every((byte) => byte === 0)) return { kind: 'zero' }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (bytes.byteLength !== BLOCK || view.getUint32(0, true) !== MAGIC) return { kind: 'garbage', reason: 'no magic' }
  if (view.getUint32(4, true) !== nameTag(name)) return { kind: 'garbage', reason: 'block of another volume' }
  if (view.getUint32(8, true) !== block) return { kind: 'garbage', reason: `block ${view.getUint32(8, true)} found at ${block}` }
  const seq = view.getUint32(12, true)
  const writer = view.getUint32(16, true)
  const expected = registerPayload(name, block, seq, writer)
  if (!Buffer.from(expected).equals(Buffer.from(bytes))) return { kind: 'garbage', reason: `seq ${seq}: payload differs from its pattern (torn or mixed)` }
  return { kind: 'data', seq, writer }
}

/** Opens the storage the way the parent's verifier does: GalleonFS's own open path, with small segments for the file store. */
export async function openStorage (storagePath: string, backend: 'file' | 'level', backupTarget?: string): Promise<GalleonFS> {
  if (backend === 'level') return await GalleonFS.open({ storagePath, backend: 'level', backupTarget })
  return await GalleonFS.open({ storagePath, backend: 'file', backendOptions: { ...FILE_OPTIONS }, backupTarget })
}

async function getOrCreate (g: GalleonFS, name: string, sizeBytes: number, extra: Record<string, unknown> = {}): Promise<void> {
  try {
    await g.getVolume(name)
  } catch (err) {
    if (!isGalleonError(err, 'VOLUME_NOT_FOUND')) throw err
    reportLine(`I create ${name} ${sizeBytes}`)
    await g.createVolume({ name, sizeBytes, ...extra })
    reportLine(`A create ${name} ${sizeBytes}`)
  }
}

/** Concurrent writers of random blocks of `name` (blocks [0, blocks)), until killed. */
function registerWriters (g: GalleonFS, name: string, blocks: number, writers: number, random: () => number, nextSeq: () => number, durableShare = 0.7): Array<Promise<void>> {
  const loops: Array<Promise<void>> = []
  for (let writer = 0; writer < writers; writer++) {
    loops.push((async () => {
      for (;;) {
        const block = Math.floor(random() * blocks)
        const seq = nextSeq()
        const durable = random() < durableShare
        const data = registerPayload(name, block, seq, writer)
        reportLine(`W ${name} ${block} ${seq} ${durable ? 'D' : 'A'}`)
        await g.writeBlock(name, block, data, durable ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged)
        reportLine(`${durable ? 'ack' : 'acka'} ${name} ${block} ${seq}`)
      }
    })())
  }
  return loops
}

async function main (): Promise<void> {
  const [storagePath, backend, workload, seedText, seqBaseText, backupTarget] = process.argv.slice(2)
  if (storagePath === undefined || (backend !== 'file' && backend !== 'level') || workload === undefined || seedText === undefined || seqBaseText === undefined || backupTarget === undefined) {
    throw new Error('usage: h63-workload-child <storagePath> <file|level> <workload> <seed> <seqBase> <backupTarget>')
  }
  const random = seededRandom(Number(seedText))
  let seq = Number(seqBaseText)
  const nextSeq = (): number => seq++
  const g = await openStorage(storagePath, backend, backupTarget)
  if (workload === 'register') {
    await getOrCreate(g, 'reg', 64 * BLOCK)
    reportLine('ready')
    const loops = registerWriters(g, 'reg', 64, 8, random, nextSeq)
    // Flushes now and then: every write acknowledged before one is durable once it resolves.
    loops.push((async () => {
      for (;;) {
        await new Promise((resolve) => setTimeout(resolve, 20 + random() * 60))
        const at = nextSeq()
        reportLine(`F ${at}`)
        await g.flush('reg')
        reportLine(`flushed ${at}`)
      }
    })())
    await Promise.all(loops)
  } else if (workload === 'metadata') {
    await getOrCreate(g, 'enc', 32 * BLOCK, { storageClass: 'encrypted-storage', replicas: 1 })
    reportLine('ready')
    const loops = registerWriters(g, 'enc', 32, 2, random, nextSeq, 0.8)
    // Key rotation of the encrypted volume, over and over.
    loops.push((async () => {
      for (;;) {
        // After a power cut the interrupted rotation resumes on open: wait for it (BUSY until done).
        while ((await g.getVolumeEncryption('enc')).rotation !== undefined) await new Promise((resolve) => setTimeout(resolve, 20))
        reportLine('I rotate enc')
        await g.rotateVolumeKey('enc', { wait: true })
        const info = await g.getVolumeEncryption('enc')
        reportLine(`A rotate enc ${String(info.keyVersion)}`)
      }
    })())
    // Volumes created, written, snapshotted, grown; snapshots deleted.
    loops.push((async () => {
      const mine: Array<{ name: string, size: number, snaps: string[] }> = []
      for (let step = 0; ; step++) {
        const action = mine.length === 0 ? 0 : Math.floor(random() * 4)
        if (action === 0) {
          const name = `m${nextSeq()}`
          const size = (4 + Math.floor(random() * 8)) * BLOCK
          reportLine(`I create ${name} ${size}`)
          await g.createVolume({ name, sizeBytes: size })
          reportLine(`A create ${name} ${size}`)
          mine.push({ name, size, snaps: [] })
        } else {
          const volume = mine[Math.floor(random() * mine.length)] as { name: string, size: number, snaps: string[] }
          if (action === 1) {
            const size = volume.size + (1 + Math.floor(random() * 4)) * BLOCK
            reportLine(`I expand ${volume.name} ${size}`)
            await g.expandVolume(volume.name, size)
            reportLine(`A expand ${volume.name} ${size}`)
            volume.size = size
          } else if (action === 2) {
            // Block 0 written durably, then a snapshot that must hold it.
            const at = nextSeq()
            reportLine(`W ${volume.name} 0 ${at} D`)
            await g.writeBlock(volume.name, 0, registerPayload(volume.name, 0, at, 0), WriteConcern.WriteDurable)
            reportLine(`ack ${volume.name} 0 ${at}`)
            const snap = `s${nextSeq()}`
            reportLine(`I snap ${volume.name} ${snap} ${at}`)
            await g.createSnapshot(volume.name, snap)
            reportLine(`A snap ${volume.name} ${snap} ${at}`)
            volume.snaps.push(snap)
          } else if (volume.snaps.length > 0) {
            const snap = volume.snaps.splice(Math.floor(random() * volume.snaps.length), 1)[0] as string
            reportLine(`I delsnap ${volume.name} ${snap}`)
            await g.deleteSnapshot(volume.name, snap)
            reportLine(`A delsnap ${volume.name} ${snap}`)
          }
        }
      }
    })())
    await Promise.all(loops)
  } else if (workload === 'backup') {
    await getOrCreate(g, 'bk', 16 * BLOCK)
    reportLine('ready')
    const strategies = [BackupStrategy.Full, BackupStrategy.Incremental, BackupStrategy.Differential]
    for (;;) {
      // A phase: every block rewritten durably with the phase number as its writer, then a backup.
      const phase = nextSeq()
      await Promise.all(Array.from({ length: 16 }, async (_unused, block) => {
        if (random() < 0.3 && phase > Number(seqBaseText)) return // incremental backups see fewer changes
        const at = nextSeq()
        reportLine(`W bk ${block} ${at} D`)
        await g.writeBlock('bk', block, registerPayload('bk', block, at, phase), WriteConcern.WriteDurable)
        reportLine(`ack bk ${block} ${at}`)
      }))
      const strategy = strategies[Math.floor(random() * strategies.length)] as BackupStrategy
      reportLine(`I backup ${phase} ${strategy}`)
      const backup = await g.createBackup('bk', { strategy, target: backupTarget })
      reportLine(`A backup ${phase} ${backup.id}`)
    }
  } else {
    throw new Error(`unknown workload ${workload}`)
  }
}

runAsChild(import.meta.url, main)
