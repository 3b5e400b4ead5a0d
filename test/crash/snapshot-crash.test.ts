// Crash test of snapshots and clones: child processes (snapshot-child.ts) write durable blocks to
// several volumes while taking snapshots, cloning, deleting and reverting, and are killed with
// SIGKILL at random moments (also during open, that is during recovery). After each kill the
// storage is reopened here and checked:
//   - open succeeds; scrub finds no bad block in any volume (snapshot-held versions included);
//   - every block of every volume and every snapshot is zeros or one whole write of that block;
//   - every snapshot whose creation resolved reads exactly as it did then (its hash), in this trial
//     and every later one, unless its deletion was issued; snapshots seen for the first time are
//     hashed here and must never change afterwards;
//   - every clone whose creation resolved exists unless its deletion was issued;
//   - every acknowledged WriteDurable write is there (the block holds it or a later write), unless a
//     revert of that volume was issued after it;
//   - a volume whose last operation was a revert reads exactly as the snapshot it was reverted to,
//     or, when the kill came before the revert resolved, possibly as it read just before (a revert
//     is all or nothing: recovery finishes one that had started);
//   - listChangedBlocks(volume, { from: snapshot }) lists every block where the two differ.
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
import { BLOCK_BYTES, VOLUME_BLOCKS, blockPayload, decodeBlockAt, sha256 } from './snapshot-child.js'
import { killAfterReady, trialCount } from './support.js'
import { seededRandom } from '../conformance/fixtures.js'

const TRIALS = Math.max(10, Math.ceil(trialCount() / 2))
const BASE_SEED = process.env.GALLEON_CRASH_SEED !== undefined ? Number(process.env.GALLEON_CRASH_SEED) : Math.floor(Math.random() * 0x7fffffff)
const CHILD = fileURLToPath(new URL('./snapshot-child.ts', import.meta.url))
const SEQ_STRIDE = 1 << 24
const CHILD_DEADLINE_MS = 60_000

/** What the children reported, across trials on one storage. */
class Model {
  /** volume@snapshot -> hash it must keep. */
  readonly hashes = new Map<string, string>()
  /** Snapshots that must exist (creation resolved, no deletion issued, volume not being deleted). */
  readonly mustExist = new Set<string>()
  /** Clones that must exist. */
  readonly clones = new Set<string>()
  /** volume -> block -> newest acknowledged durable write. */
  readonly acks = new Map<string, Map<number, number>>()
  /** volume -> the revert issued last, while no write to it followed. */
  readonly reverted = new Map<string, { snapshot: string, before: string | undefined, resolved: boolean }>()
  #before = new Map<string, string>()

  absorb (lines: readonly string[]): string | undefined {
    for (const line of lines) {
      const [kind, a, b, c] = line.split(' ') as [string, string, string, string]
      switch (kind) {
        case 'W': this.reverted.delete(a); break
        case 'A': {
          let acks = this.acks.get(a)
          if (acks === undefined) this.acks.set(a, acks = new Map())
          const block = Number(b)
          acks.set(block, Math.max(acks.get(block) ?? 0, Number(c)))
          break
        }
        case 'SH': {
          const key = `${a}@${b}`
          const known = this.hashes.get(key)
          if (known !== undefined && known !== c) return `snapshot ${key} hashed ${c} in the child but ${known} before`
          this.hashes.set(key, c)
          this.mustExist.add(key)
          break
        }
        case 'CA': this.clones.add(a); break
        case 'DS': this.mustExist.delete(`${a}@${b}`); break
        case 'DV':
          this.clones.delete(a)
          this.acks.delete(a)
          this.reverted.delete(a)
          for (const key of [...this.mustExist]) {
            // Its snapshots go with it, and so does the implicit snapshot its source kept for it.
            const snapshot = key.slice(key.indexOf('@') + 1)
            if (key.startsWith(`${a}@`) || snapshot === `clone-${a}` || snapshot.startsWith(`clone-${a}-`)) this.mustExist.delete(key)
          }
          break
        case 'RB': this.#before.set(a, b); break
        case 'R':
          this.acks.delete(a)
          this.reverted.set(a, { snapshot: b, before: this.#before.get(a), resolved: false })
          break
        case 'RH': {
          const revert = this.reverted.get(a)
          if (revert !== undefined) revert.resolved = true
          const expected = revert === undefined ? undefined : this.hashes.get(`${a}@${revert.snapshot}`)
          if (expected !== undefined && expected !== b) return `volume ${a} hashed ${b} right after its revert to ${revert?.snapshot}, whose hash is ${expected}`
          break
        }
        case 'error': return `child failed: ${line}`
      }
    }
    return undefined
  }
}

/**
 * Where a child's kill timer starts: at 'opening' (a kill during open and recovery), at 'ready'
 * (during the workload), or at its first snapshot taken ('snapshot': the workload always reached
 * the operations this test is about, however slow a loaded machine makes the child).
 */
type KillFrom = 'opening' | 'ready' | 'snapshot'

async function runChild (storagePath: string, backend: string, seqBase: number, seed: number, from: KillFrom, delayMs: number): Promise<{ lines: string[], killed: boolean, code: number | null, stderr: string }> {
  const run = await killAfterReady(CHILD, [storagePath, backend, String(seqBase), String(seed)], delayMs, CHILD_DEADLINE_MS, (line) => (from === 'snapshot' ? line.startsWith('SH ') : line === from))
  return { lines: run.lines, killed: run.killed, code: run.exit.code, stderr: run.exit.stderr }
}

async function verify (storagePath: string, backend: 'file' | 'level', model: Model): Promise<string[]> {
  const problems: string[] = []
  const g = await GalleonFS.open({ storagePath, backend })
  try {
    const volumes = await g.listVolumes()
    const names = new Set(volumes.map((v) => v.name))
    for (const clone of model.clones) if (!names.has(clone)) problems.push(`clone ${clone} was created but is gone`)
    for (const volume of volumes) {
      const scrub = await g.scrub(volume.name)
      for (const bad of scrub.badBlocks) problems.push(`scrub ${volume.name}: block ${bad.index} gen ${bad.generation}: ${bad.code} ${bad.message}`)
      const live = await g.read(volume.name, 0, VOLUME_BLOCKS * BLOCK_BYTES)
      const acks = model.acks.get(volume.name)
      for (let i = 0; i < VOLUME_BLOCKS; i++) {
        const found = decodeBlockAt(live, i * BLOCK_BYTES, i)
        if (found.kind === 'garbage') problems.push(`${volume.name} block ${i}: ${found.reason}`)
        const acked = acks?.get(i)
        if (acked !== undefined && (found.kind !== 'data' || found.seq < acked)) {
          problems.push(`${volume.name} block ${i}: durable write seq ${acked} was acknowledged but the block holds ${found.kind === 'data' ? `seq ${found.seq}` : found.kind}`)
        }
      }
      const snapshots = await g.listSnapshots(volume.name)
      const present = new Set(snapshots.map((s) => s.name))
      for (const key of model.mustExist) {
        const [owner, snapshot] = key.split('@') as [string, string]
        if (owner === volume.name && !present.has(snapshot)) problems.push(`snapshot ${key} was created but is gone`)
      }
      for (const snapshot of snapshots) {
        const key = `${volume.name}@${snapshot.name}`
        const bytes = await g.read({ volume: volume.name, snapshot: snapshot.name }, 0, VOLUME_BLOCKS * BLOCK_BYTES)
        const hash = sha256(bytes)
        const expected = model.hashes.get(key)
        if (expected === undefined) model.hashes.set(key, hash)
        else if (expected !== hash) problems.push(`snapshot ${key} changed: hash ${hash}, was ${expected}`)
        const changed = new Set(await g.listChangedBlocks(volume.name, { from: snapshot.name }))
        for (let i = 0; i < VOLUME_BLOCKS; i++) {
          const found = decodeBlockAt(bytes, i * BLOCK_BYTES, i)
          if (found.kind === 'garbage') problems.push(`${key} block ${i}: ${found.reason}`)
          const a = bytes.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES)
          const b = live.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES)
          if (!changed.has(i) && Buffer.compare(a, b) !== 0) problems.push(`${volume.name} block ${i} differs from ${snapshot.name} but is not listed as changed`)
        }
      }
      const revert = model.reverted.get(volume.name)
      if (revert !== undefined) {
        const expected = model.hashes.get(`${volume.name}@${revert.snapshot}`)
        const hash = sha256(live)
        const unchanged = !revert.resolved && hash === revert.before
        if (expected !== undefined && hash !== expected && !unchanged) {
          problems.push(`${volume.name} was reverted to ${revert.snapshot} (${revert.resolved ? 'resolved' : 'cut short'}, no write since) but reads neither as it${revert.resolved ? '' : ' nor as before the revert'}`)
        }
      }
    }
  } finally {
    await g.close()
  }
  model.reverted.clear()
  return problems
}

for (const backend of ['file', 'level'] as const) {
  describe(`snapshot crash test: ${backend}`, () => {
    it(`${TRIALS} SIGKILL trials with snapshots, clones, reverts and deletes interleaved with durable writes`, async () => {
      const storagePath = await mkdtemp(join(tmpdir(), `galleon-snapcrash-${backend}-`))
      const seed = BASE_SEED ^ (backend === 'file' ? 0 : 0x5bd1e995)
      const random = seededRandom(seed)
      try {
        const setup = await GalleonFS.open({ storagePath, backend })
        for (const name of ['v0', 'v1']) {
          await setup.createVolume({ name, sizeBytes: VOLUME_BLOCKS * BLOCK_BYTES })
          await setup.writeBlock(name, 0, blockPayload(0, 0))
        }
        await setup.close()
        const model = new Model()
        let snapshotsSeen = 0
        let opsSeen = 0
        for (let trial = 0; trial < TRIALS; trial++) {
          const duringOpen = random() < 0.15
          const from: KillFrom = duringOpen ? 'opening' : random() < 0.6 ? 'snapshot' : 'ready'
          const delay = duringOpen ? Math.floor(random() * 150) : from === 'snapshot' ? Math.floor(random() * 300) : 30 + Math.floor(random() * 400)
          const run = await runChild(storagePath, backend, (trial + 1) * SEQ_STRIDE, Math.floor(random() * 0x7fffffff), from, delay)
          const context = `seed ${seed}, trial ${trial} (kill ${delay} ms after ${from === 'opening' ? 'opening' : from === 'ready' ? 'ready' : 'its first snapshot'})`
          assert.ok(run.killed || run.code === 0, `${context}: child exited with ${run.code} before the kill: ${run.lines.slice(-3).join(' | ')} ${run.stderr.slice(0, 2000)}`)
          const protocol = model.absorb(run.lines)
          assert.equal(protocol, undefined, `${context}: ${protocol}`)
          snapshotsSeen += run.lines.filter((line) => line.startsWith('SH ')).length
          opsSeen += run.lines.filter((line) => /^(S|C|CS|DS|DV|R) /.test(line)).length
          const problems = await verify(storagePath, backend, model)
          assert.deepEqual(problems.slice(0, 20), [], `${context}: ${problems.length} problems`)
        }
        // The workload really did what it is meant to exercise. A loaded machine does less per trial
        // (a clean-clone CI run beside other tests saw 20 snapshots in 50 trials, all killed from
        // 'ready'), so about half the trials start their kill timer at the first snapshot taken:
        // these bounds hold however slow the machine, and still fail if the workload stops taking
        // snapshots or doing the other operations.
        assert.ok(snapshotsSeen >= TRIALS / 4, `only ${snapshotsSeen} snapshots taken in ${TRIALS} trials`)
        assert.ok(opsSeen >= TRIALS / 2, `only ${opsSeen} snapshot/clone/delete/revert operations in ${TRIALS} trials`)
      } finally {
        await rm(storagePath, { recursive: true, force: true })
      }
    })
  })
}
