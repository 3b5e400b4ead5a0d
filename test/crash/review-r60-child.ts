// Child process of review-r60-crash.test.ts: WriteDurable writes and whole-block trims on chains of
// clones (clones of clones), interleaved with snapshots, reverts, expansions, snapshot deletions and
// forced deletions of volumes that clones still read from, until the parent kills it with SIGKILL.
// Every block it writes names its index and write number (snapshot-child.ts's blockPayload), so the
// parent can tell which write a block holds after a kill.
//
// Usage: node review-r60-child.ts <storagePath> <file|level> <seqBase> <seed>
//
// Protocol (one line each, written synchronously before the next step):
//   opening / ready                  around GalleonFS.open()
//   W <vol> <block> <seq>            a WriteDurable writeBlock issued; A <vol> <block> <seq> resolved
//   T <vol> <first> <count> <seq>    a trim of whole blocks issued; TA <vol> <first> <count> resolved
//   S <vol> <snap>                   createSnapshot issued
//   SV <vol> <snap> <values>         it resolved (or: the implicit snapshot of a clone); what each
//                                    block of it holds (0 zeros, else the write number), comma separated
//   C <src> <clone> / CS <src> <snap> <clone>   cloneVolume of the live volume / of a snapshot issued
//   IM <src> <snap> <clone>          the implicit snapshot that clone reads from
//   CV <clone> <values>              the clone resolved, and reads this (no write to it yet)
//   DS <vol> <snap> / ds ...         deleteSnapshot (force) issued / resolved
//   DV <vol> / dv ...                deleteVolume (force) issued / resolved
//   R <vol> <snap> / RH <vol>        restoreSnapshot issued (no write to the volume in flight until
//                                    RH) / resolved
//   E <vol> <blocks> / EA ...        expandVolume to that many blocks issued / resolved
//   error <message>                  something failed; exit code 3

import { blockPayload, decodeBlockAt } from './snapshot-child.js'
import { seededRandom } from '../conformance/fixtures.js'
import { childArguments, reportLine, runAsChild } from './support.js'

export const BLOCK_BYTES = 4096
export const FIRST_BLOCKS = 48
export const MAX_BLOCKS = 160
const WRITERS = 4
const MAX_VOLUMES = 7
const MAX_SNAPSHOTS = 5

/** What each block of `bytes` holds: 0 for zeros, else the write number; throws on anything else. */
export function valuesOf (bytes: Uint8Array): number[] {
  const out: number[] = []
  for (let i = 0; i < bytes.byteLength / BLOCK_BYTES; i++) {
    const found = decodeBlockAt(bytes, i * BLOCK_BYTES, i)
    if (found.kind === 'garbage') throw new Error(`block ${i}: ${found.reason}`)
    out.push(found.kind === 'zero' ? 0 : found.seq)
  }
  return out
}

async function main (): Promise<void> {
  const { storagePath, backend, seqBase, seed } = childArguments('review-r60-child.ts')
  const { GalleonFS, WriteConcern } = await import('../../src/index.js')
  const random = seededRandom(seed)
  let nextSeq = seqBase
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T

  reportLine('opening')
  const g = await GalleonFS.open({ storagePath, backend })
  reportLine('ready')

  const paused = new Set<string>()
  const inFlight = new Map<string, Set<Promise<unknown>>>()
  const track = (volume: string, work: Promise<unknown>): void => {
    let set = inFlight.get(volume)
    if (set === undefined) inFlight.set(volume, set = new Set())
    set.add(work)
    void work.finally(() => set?.delete(work)).catch(() => {})
  }
  const gone = (err: unknown): boolean => ['VOLUME_NOT_FOUND'].includes((err as { code?: string }).code ?? '')

  async function writer (): Promise<void> {
    while (true) {
      const volumes = (await g.listVolumes()).filter((v) => !paused.has(v.name))
      if (volumes.length === 0) { await new Promise((resolve) => setTimeout(resolve, 1)); continue }
      const volume = pick(volumes)
      const blocks = volume.sizeBytes / BLOCK_BYTES
      const seq = nextSeq++
      if (random() < 0.12) {
        const first = Math.floor(random() * blocks)
        const count = 1 + Math.floor(random() * Math.min(4, blocks - first))
        reportLine(`T ${volume.name} ${first} ${count} ${seq}`)
        const trim = g.trim(volume.name, first * BLOCK_BYTES, count * BLOCK_BYTES)
        track(volume.name, trim)
        try { await trim; reportLine(`TA ${volume.name} ${first} ${count}`) } catch (err) { if (!gone(err)) throw err }
        continue
      }
      const block = Math.floor(random() * blocks)
      reportLine(`W ${volume.name} ${block} ${seq}`)
      const write = g.writeBlock(volume.name, block, blockPayload(block, seq), WriteConcern.WriteDurable)
      track(volume.name, write)
      try { await write; reportLine(`A ${volume.name} ${block} ${seq}`) } catch (err) { if (!gone(err)) throw err }
    }
  }

  /** Stops the writers on `volume` and waits for those in flight. */
  async function quiet (volume: string): Promise<void> {
    paused.add(volume)
    await Promise.all([...(inFlight.get(volume) ?? [])].map(async (w) => await w.catch(() => {})))
  }

  async function values (source: Parameters<typeof g.read>[0], sizeBytes: number): Promise<string> {
    return valuesOf(await g.read(source, 0, sizeBytes)).join(',')
  }

  async function admin (): Promise<void> {
    while (true) {
      await new Promise((resolve) => setTimeout(resolve, 2 + random() * 12))
      const volumes = await g.listVolumes()
      const volume = pick(volumes)
      const snapshots = await g.listSnapshots(volume.name)
      const choice = random()
      if (choice < 0.22 && snapshots.length < MAX_SNAPSHOTS) {
        const name = `s${nextSeq++}`
        reportLine(`S ${volume.name} ${name}`)
        const made = await g.createSnapshot(volume.name, name)
        reportLine(`SV ${volume.name} ${name} ${await values({ volume: volume.name, snapshot: name }, made.sizeBytes)}`)
      } else if (choice < 0.42 && volumes.length < MAX_VOLUMES) {
        // Clones of clones come from picking any volume, clones included.
        const clone = `c${nextSeq++}`
        paused.add(clone)
        try {
          if (snapshots.length > 0 && random() < 0.5) {
            const snapshot = pick(snapshots)
            reportLine(`CS ${volume.name} ${snapshot.name} ${clone}`)
            await g.cloneVolume({ volume: volume.name, snapshot: snapshot.name }, clone)
          } else {
            reportLine(`C ${volume.name} ${clone}`)
            const made = await g.cloneVolume(volume.name, clone)
            const implicit = (await g.listSnapshots(volume.name)).find((s) => s.clones.includes(made.id))
            if (implicit !== undefined) {
              reportLine(`IM ${volume.name} ${implicit.name} ${clone}`)
              reportLine(`SV ${volume.name} ${implicit.name} ${await values({ volume: volume.name, snapshot: implicit.name }, implicit.sizeBytes)}`)
            }
          }
          const made = await g.getVolume(clone)
          reportLine(`CV ${clone} ${await values(clone, made.sizeBytes)}`)
        } finally {
          paused.delete(clone)
        }
      } else if (choice < 0.52 && snapshots.length > 0) {
        const snapshot = pick(snapshots)
        reportLine(`DS ${volume.name} ${snapshot.name}`)
        await g.deleteSnapshot(volume.name, snapshot.name, { force: true })
        reportLine(`ds ${volume.name} ${snapshot.name}`)
      } else if (choice < 0.62 && volumes.length > 2) {
        // Prefer a volume in the middle of a chain: a clone that clones read from.
        const middle = volumes.filter((v) => v.source !== undefined && volumes.some((c) => c.source?.volumeId === v.id))
        const victim = middle.length > 0 && random() < 0.7 ? pick(middle) : volume
        reportLine(`DV ${victim.name}`)
        await g.deleteVolume(victim.name, { force: true })
        reportLine(`dv ${victim.name}`)
      } else if (choice < 0.74 && snapshots.length > 0) {
        const snapshot = pick(snapshots)
        try {
          await quiet(volume.name)
          reportLine(`R ${volume.name} ${snapshot.name}`)
          await g.restoreSnapshot(volume.name, snapshot.name)
          reportLine(`RH ${volume.name}`)
        } finally {
          paused.delete(volume.name)
        }
      } else if (choice < 0.86) {
        const blocks = volume.sizeBytes / BLOCK_BYTES
        if (blocks >= MAX_BLOCKS) continue
        const to = Math.min(MAX_BLOCKS, blocks + 1 + Math.floor(random() * 24))
        reportLine(`E ${volume.name} ${to}`)
        await g.expandVolume(volume.name, to * BLOCK_BYTES)
        reportLine(`EA ${volume.name} ${to}`)
      }
    }
  }

  await Promise.all([admin(), ...Array.from({ length: WRITERS }, writer)])
}

runAsChild(import.meta.url, main)
