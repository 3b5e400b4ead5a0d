// Crash test of chains of clones (review r60): child processes (review-r60-child.ts) write durable
// blocks and trim whole blocks on volumes, clones and clones of clones while taking snapshots,
// reverting, expanding volumes, deleting snapshots and force-deleting volumes that clones still read
// from, and are killed with SIGKILL at random moments (also during open). After each kill the
// storage is reopened and checked against what the child reported, block by block:
//   - every volume whose creation resolved is there unless its deletion was issued; so is every
//     snapshot; scrub finds no bad block;
//   - every block of every volume holds one of the writes or trims it may hold: the newest one
//     acknowledged (WriteDurable) or one issued after it; a clone's blocks start as it read when its
//     creation resolved, whatever became of the volumes and snapshots it was cloned from;
//   - a volume whose revert was cut short reads wholly as before it or wholly as the snapshot;
//   - a volume's size is at least the newest expansion that resolved, at most the newest issued;
//   - every snapshot reads exactly as it did when taken;
//   - listChangedBlocks(volume, { from: snapshot }) lists every block where the two differ.
// What the storage holds after a trial is the starting point of the next one.
//
// Env: GALLEON_CRASH_TRIALS (half of it, at least 10, are run per backend: the engine's crash test
//      runs the whole count; this one's trials each start a child that works for up to a second),
//      GALLEON_CRASH_SEED.

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS } from '../../src/index.js'
import { blockPayload, decodeBlockAt } from './snapshot-child.js'
import { BLOCK_BYTES, FIRST_BLOCKS } from './review-r60-child.js'
import { killAfterReady, trialCount } from './support.js'
import { seededRandom } from '../conformance/fixtures.js'

const TRIALS = Math.max(10, Math.ceil(trialCount() / 2))
const BASE_SEED = process.env.GALLEON_CRASH_SEED !== undefined ? Number(process.env.GALLEON_CRASH_SEED) : Math.floor(Math.random() * 0x7fffffff)
const CHILD = fileURLToPath(new URL('./review-r60-child.ts', import.meta.url))
const SEQ_STRIDE = 1 << 24
const CHILD_DEADLINE_MS = 60_000

/**
 * What a block may hold after a kill: a write number (> 0), or zeros (<= 0: 0 the state known at
 * the start or a revert, -n a trim issued as number n).
 */
type Candidates = number[]

interface VolumeModel {
  /** Block -> what it may hold; a block not listed holds zeros. */
  blocks: Map<number, Candidates>
  minBlocks: number
  maxBlocks: number
  /** A revert issued and not resolved: the volume reads wholly as `before` allows or as `target`. */
  revert?: { before: Map<number, Candidates>, target: number[], snapshot: string }
}

const copyBlocks = (blocks: Map<number, Candidates>): Map<number, Candidates> => new Map([...blocks].map(([i, c]) => [i, [...c]]))
const exactly = (values: readonly number[]): Map<number, Candidates> => new Map(values.map((v, i) => [i, [v]]))
const allows = (candidates: Candidates | undefined, value: number): boolean => (candidates ?? [0]).some((c) => value === 0 ? c <= 0 : c === value)

class Model {
  readonly volumes = new Map<string, VolumeModel>()
  /** vol@snap -> what each block of the snapshot holds. */
  readonly snapshots = new Map<string, number[]>()
  readonly volumesKept = new Set<string>()
  readonly snapshotsKept = new Set<string>()
  /** clone -> the implicit snapshot (vol@snap) it reads from. */
  readonly implicitOf = new Map<string, string>()

  absorb (lines: readonly string[]): string | undefined {
    for (const line of lines) {
      const [kind, a = '', b = '', c = '', d = ''] = line.split(' ')
      const volume = this.volumes.get(a)
      switch (kind) {
        case 'W': volume?.blocks.set(Number(b), [...(volume.blocks.get(Number(b)) ?? [0]), Number(c)]); break
        case 'A': {
          // Writes to a block apply in the order issued: only this write and later ones may be there.
          const seq = Number(c)
          volume?.blocks.set(Number(b), (volume.blocks.get(Number(b)) ?? [0]).filter((v) => Math.abs(v) >= seq))
          break
        }
        case 'T':
          for (let i = Number(b); i < Number(b) + Number(c); i++) volume?.blocks.set(i, [...(volume.blocks.get(i) ?? [0]), -Number(d)])
          break
        case 'SV': {
          const values = c === '' ? [] : c.split(',').map(Number)
          this.snapshots.set(`${a}@${b}`, values)
          this.snapshotsKept.add(`${a}@${b}`)
          break
        }
        case 'CS': this.implicitOf.delete(c); this.#pending.set(c, `${a}@${b}`); break
        case 'C': this.#pending.delete(b); break
        case 'IM': this.implicitOf.set(c, `${a}@${b}`); this.#pending.set(c, `${a}@${b}`); break
        case 'CV': {
          const values = b.split(',').map(Number)
          const from = this.#pending.get(a)
          const source = from === undefined ? undefined : this.snapshots.get(from)
          if (source !== undefined && source.join(',') !== values.join(',')) return `clone ${a} of ${from} reads ${values.join(',')} but the snapshot reads ${source.join(',')}`
          this.volumes.set(a, { blocks: exactly(values), minBlocks: values.length, maxBlocks: values.length })
          this.volumesKept.add(a)
          break
        }
        case 'DS': this.snapshotsKept.delete(`${a}@${b}`); break
        case 'DV': {
          this.volumesKept.delete(a)
          for (const key of [...this.snapshotsKept]) if (key.startsWith(`${a}@`)) this.snapshotsKept.delete(key)
          const implicit = this.implicitOf.get(a)
          if (implicit !== undefined) this.snapshotsKept.delete(implicit)
          break
        }
        case 'R': {
          const target = this.snapshots.get(`${a}@${b}`)
          if (volume === undefined) break
          if (target === undefined) return `revert of ${a} to ${b}, a snapshot never reported`
          const padded = Array.from({ length: volume.maxBlocks }, (_, i) => target[i] ?? 0)
          volume.revert = { before: copyBlocks(volume.blocks), target: padded, snapshot: b }
          // Either outcome, block by block, for what follows (no write is in flight until RH).
          for (let i = 0; i < padded.length; i++) volume.blocks.set(i, [...(volume.blocks.get(i) ?? [0]), padded[i] as number])
          break
        }
        case 'RH':
          if (volume?.revert !== undefined) { volume.blocks = exactly(volume.revert.target); delete volume.revert }
          break
        case 'E': if (volume !== undefined) volume.maxBlocks = Math.max(volume.maxBlocks, Number(b)); break
        case 'EA': if (volume !== undefined) volume.minBlocks = Math.max(volume.minBlocks, Number(b)); break
        case 'error': return `child failed: ${line}`
      }
    }
    return undefined
  }

  /** vol -> the snapshot (vol@snap) its clone creation reads, while it has not resolved. */
  readonly #pending = new Map<string, string>()
}

async function runChild (storagePath: string, backend: string, seqBase: number, seed: number, duringOpen: boolean, delayMs: number): Promise<{ lines: string[], killed: boolean, code: number | null, stderr: string }> {
  const run = await killAfterReady(CHILD, [storagePath, backend, String(seqBase), String(seed)], delayMs, CHILD_DEADLINE_MS, (line) => line === (duringOpen ? 'opening' : 'ready'))
  return { lines: run.lines, killed: run.killed, code: run.exit.code, stderr: run.exit.stderr }
}

function decodeAll (bytes: Uint8Array, label: string, problems: string[]): number[] {
  const out: number[] = []
  for (let i = 0; i < bytes.byteLength / BLOCK_BYTES; i++) {
    const found = decodeBlockAt(bytes, i * BLOCK_BYTES, i)
    if (found.kind === 'garbage') problems.push(`${label} block ${i}: ${found.reason}`)
    out.push(found.kind === 'data' ? found.seq : found.kind === 'zero' ? 0 : Number.NaN)
  }
  return out
}

/** Checks the storage against `model`; returns the problems and the model of what it holds now. */
async function verify (storagePath: string, backend: 'file' | 'level', model: Model): Promise<{ problems: string[], next: Model }> {
  const problems: string[] = []
  const next = new Model()
  const g = await GalleonFS.open({ storagePath, backend })
  try {
    const volumes = await g.listVolumes()
    const names = new Set(volumes.map((v) => v.name))
    for (const name of model.volumesKept) if (!names.has(name)) problems.push(`volume ${name} was created but is gone`)
    const byId = new Map(volumes.map((v) => [v.id, v.name]))
    for (const volume of volumes) {
      const scrub = await g.scrub(volume.name)
      for (const bad of scrub.badBlocks) problems.push(`scrub ${volume.name}: block ${bad.index} gen ${bad.generation}: ${bad.code} ${bad.message}`)
      const blocks = volume.sizeBytes / BLOCK_BYTES
      const live = decodeAll(await g.read(volume.name, 0, volume.sizeBytes), volume.name, problems)
      const known = model.volumes.get(volume.name)
      if (known !== undefined) {
        if (blocks < known.minBlocks || blocks > known.maxBlocks) problems.push(`${volume.name} has ${blocks} blocks; expansions to ${known.minBlocks} resolved, to ${known.maxBlocks} issued`)
        const fits = (allowed: Map<number, Candidates>): number[] => live.flatMap((v, i) => allows(allowed.get(i), v) ? [] : [i])
        const revert = known.revert
        if (revert !== undefined) {
          const asBefore = fits(revert.before)
          const asTarget = live.flatMap((v, i) => v === (revert.target[i] ?? 0) ? [] : [i])
          if (asBefore.length > 0 && asTarget.length > 0) problems.push(`${volume.name}: a revert to ${revert.snapshot} was cut short, and it reads neither as before it (blocks ${asBefore.join(',')} differ) nor as the snapshot (blocks ${asTarget.join(',')} differ)`)
        } else {
          for (const i of fits(known.blocks)) problems.push(`${volume.name} block ${i} holds ${live[i]}, expected one of ${(known.blocks.get(i) ?? [0]).join('/')}`)
        }
      }
      next.volumes.set(volume.name, { blocks: exactly(live), minBlocks: blocks, maxBlocks: blocks })
      next.volumesKept.add(volume.name)
      const snapshots = await g.listSnapshots(volume.name)
      const present = new Set(snapshots.map((s) => s.name))
      for (const key of model.snapshotsKept) {
        const [owner, name] = key.split('@') as [string, string]
        if (owner === volume.name && !present.has(name)) problems.push(`snapshot ${key} was created but is gone`)
      }
      for (const snapshot of snapshots) {
        const key = `${volume.name}@${snapshot.name}`
        const values = decodeAll(await g.read({ volume: volume.name, snapshot: snapshot.name }, 0, snapshot.sizeBytes), key, problems)
        const expected = model.snapshots.get(key)
        if (expected !== undefined && expected.join(',') !== values.join(',')) problems.push(`snapshot ${key} changed: reads ${values.join(',')}, was ${expected.join(',')}`)
        const changed = new Set(await g.listChangedBlocks(volume.name, { from: snapshot.name }))
        for (let i = 0; i < blocks; i++) {
          if ((values[i] ?? 0) !== live[i] && !changed.has(i)) problems.push(`${volume.name} block ${i} differs from ${snapshot.name} (${live[i]} against ${values[i] ?? 0}) but is not listed as changed`)
        }
        next.snapshots.set(key, values)
        next.snapshotsKept.add(key)
        if (snapshot.implicit) for (const clone of snapshot.clones) next.implicitOf.set(byId.get(clone) ?? clone, key)
      }
    }
  } finally {
    await g.close()
  }
  return { problems, next }
}

for (const backend of ['file', 'level'] as const) {
  describe(`clone chain crash test (review r60): ${backend}`, () => {
    it(`${TRIALS} SIGKILL trials with clones of clones, expansions, trims, reverts and forced deletions under durable writes`, async (t) => {
      const storagePath = await mkdtemp(join(tmpdir(), `galleon-r60crash-${backend}-`))
      const seed = BASE_SEED ^ (backend === 'file' ? 0 : 0x5bd1e995)
      const random = seededRandom(seed)
      const seen = { expansions: 0, chains: 0, middleDeletes: 0, reverts: 0, trims: 0 }
      try {
        const setup = await GalleonFS.open({ storagePath, backend })
        await setup.createVolume({ name: 'v0', sizeBytes: FIRST_BLOCKS * BLOCK_BYTES })
        for (let i = 0; i < FIRST_BLOCKS; i += 3) await setup.writeBlock('v0', i, blockPayload(i, 1 + i))
        await setup.close()
        let model = (await verify(storagePath, backend, new Model())).next
        for (let trial = 0; trial < TRIALS; trial++) {
          const duringOpen = random() < 0.12
          const delay = duringOpen ? Math.floor(random() * 200) : 40 + Math.floor(random() * 1200)
          const run = await runChild(storagePath, backend, (trial + 1) * SEQ_STRIDE, Math.floor(random() * 0x7fffffff), duringOpen, delay)
          const context = `seed ${seed}, trial ${trial} (kill ${delay} ms after ${duringOpen ? 'opening' : 'ready'}; last lines: ${run.lines.filter((l) => !/^[WAT]A? /.test(l)).slice(-4).join(' | ')})`
          assert.ok(run.killed || run.code === 0, `${context}: child exited with ${run.code} before the kill: ${run.lines.slice(-3).join(' | ')} ${run.stderr.slice(0, 2000)}`)
          const protocol = model.absorb(run.lines)
          assert.equal(protocol, undefined, `${context}: ${protocol}`)
          seen.expansions += run.lines.filter((l) => l.startsWith('E ')).length
          seen.chains += run.lines.filter((l) => /^CS? /.test(l)).length
          seen.middleDeletes += run.lines.filter((l) => l.startsWith('DV ')).length
          seen.reverts += run.lines.filter((l) => l.startsWith('R ')).length
          seen.trims += run.lines.filter((l) => l.startsWith('T ')).length
          const { problems, next } = await verify(storagePath, backend, model)
          assert.deepEqual(problems.slice(0, 20), [], `${context}: ${problems.length} problems`)
          model = next
        }
        t.diagnostic(`operations issued: ${JSON.stringify(seen)}`)
        assert.ok(seen.expansions > 0 && seen.chains > 0 && seen.middleDeletes > 0 && seen.reverts > 0 && seen.trims > 0, `the workload did not do everything it is meant to: ${JSON.stringify(seen)}`)
      } finally {
        await rm(storagePath, { recursive: true, force: true })
      }
    })
  })
}
