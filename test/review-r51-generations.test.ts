// Block generations of an encrypted volume are reserved like nonces (volume-cipher.ts): a write,
// trim or revert that needs generations past the reservation waits for a larger one. Here the
// reservation runs out again and again (the volume's next generation is pushed up to just below
// what is persisted before each round of calls) while many writes (one block and many, aligned and
// not), trims, reverts and a data-key re-seal run at once, on the file and level stores. Checked:
// no seal is refused ("generation ... is not reserved"), no seal takes a generation at or above
// what was persisted, and writes to one block apply in the order they were called (README): a
// write that waits for a reservation is not overtaken by a later one that needs none. The same
// order is checked on a plain volume, whose writes wait only for earlier claims and edge reads.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { WriteConcern, type BlockStore } from '../src/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { LevelBlockStore } from '../backends/level/index.js'
import { BlockEngine, type VolumeBlocks } from '../src/engine/engine.js'
import { NONCE_RESERVATION, VolumeCipher } from '../src/crypto/volume-cipher.js'
import { generateKey } from '../src/crypto/keys.js'
import { seededRandom } from '../src/seeded-random.js'
import { testSeed } from './support/test-seed.js'

const BS = 4096
const BLOCKS = 24
const dirs: string[] = []
after(async () => { await Promise.all(dirs.map(async (dir) => await rm(dir, { recursive: true, force: true }))) })

async function openStore (backend: 'file' | 'level'): Promise<BlockStore> {
  const dir = await mkdtemp(join(tmpdir(), `galleon-r51-gens-${backend}-`))
  dirs.push(dir)
  const store = backend === 'file' ? new FileBlockStore({ location: dir }) : new LevelBlockStore({ location: dir })
  await store.open()
  return store
}

/**
 * An encrypted volume's cipher whose reservations take a few turns of the event loop to persist;
 * `onPersisted` runs once one is persisted, before the cipher learns it.
 */
function slowCipher (random: () => number, onPersisted?: (generations: number) => void): { cipher: VolumeCipher, persisted: () => number, sealedAbove: () => string[] } {
  let persisted = 64
  const wrong: string[] = []
  const cipher = new VolumeCipher(1, async (_version, _limit, generations) => {
    // Never at once: nothing takes generations in the middle of a seal, as the bump below would.
    for (let i = 1 + Math.floor(random() * 3); i > 0; i--) await new Promise((resolve) => setImmediate(resolve))
    if (generations > persisted) persisted = generations
    onPersisted?.(persisted)
  })
  cipher.addKey(1, generateKey(), { next: 0, limit: NONCE_RESERVATION }, true)
  cipher.restoreGenerations(persisted)
  // Every generation sealed is below what was persisted at the moment of the seal.
  const sealInto = cipher.sealInto.bind(cipher)
  cipher.sealInto = (address, plain, out) => { if (address.gen >= persisted) wrong.push(`${address.index}@${address.gen} (persisted ${persisted})`); sealInto(address, plain, out) }
  const prepareSeal = cipher.prepareSeal.bind(cipher)
  cipher.prepareSeal = (address, plain, out) => { if (address.gen >= persisted) wrong.push(`${address.index}@${address.gen} (persisted ${persisted})`); return prepareSeal(address, plain, out) }
  return { cipher, persisted: () => persisted, sealedAbove: () => wrong }
}

function patterned (seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length)
  for (let i = 0; i < length; i++) out[i] = (seed * 131 + i * 7 + 3) & 0xff
  return out
}

/**
 * Issues `count` random calls at once (each one applied to `model` as it is called) and waits for
 * them all; returns what the calls were, for failure messages.
 */
async function round (engine: BlockEngine, volume: VolumeBlocks, model: Uint8Array, random: () => number, count: number, seed: number): Promise<string[]> {
  const calls: Array<Promise<void>> = []
  const issued: string[] = []
  const pick = (n: number): number => Math.floor(random() * n)
  for (let c = 0; c < count; c++) {
    const kind = pick(10)
    const tag = seed * 1000 + c
    if (kind < 3) {
      const index = pick(BLOCKS)
      const data = patterned(tag, BS)
      issued.push(`writeBlock ${index}`)
      calls.push(engine.writeBlock(volume, index, data, WriteConcern.WriteAcknowledged))
      model.set(data, index * BS)
    } else if (kind < 6) {
      // Aligned, 1 to 10 blocks (a long one often needs a reservation a short one does not).
      const first = pick(BLOCKS)
      const blocks = 1 + pick(Math.min(10, BLOCKS - first))
      const data = patterned(tag, blocks * BS)
      issued.push(`write ${first * BS}+${blocks * BS}`)
      calls.push(engine.write(volume, first * BS, data, WriteConcern.WriteAcknowledged))
      model.set(data, first * BS)
    } else if (kind < 8) {
      const offset = pick(BLOCKS * BS - 1)
      const length = 1 + pick(Math.min(6 * BS, BLOCKS * BS - offset))
      const data = patterned(tag, length)
      issued.push(`write ${offset}+${length}`)
      calls.push(engine.write(volume, offset, data, WriteConcern.WriteAcknowledged))
      model.set(data, offset)
    } else {
      const aligned = kind === 8
      const offset = aligned ? pick(BLOCKS) * BS : pick(BLOCKS * BS - 1)
      const length = aligned ? BS * (1 + pick(Math.min(4, BLOCKS - offset / BS))) : 1 + pick(Math.min(5 * BS, BLOCKS * BS - offset))
      issued.push(`trim ${offset}+${length}`)
      calls.push(engine.trim(volume, offset, length, WriteConcern.WriteAcknowledged))
      model.fill(0, offset, offset + length)
    }
  }
  const failed = (await Promise.allSettled(calls)).flatMap((result, i) => result.status === 'rejected' ? [`${issued[i] as string}: ${(result.reason as Error)?.message}`] : [])
  assert.deepEqual(failed, [], 'calls failed')
  return issued
}

async function checkModel (engine: BlockEngine, volume: VolumeBlocks, model: Uint8Array, context: string): Promise<void> {
  const read = await engine.read(volume, 0, BLOCKS * BS)
  for (let index = 0; index < BLOCKS; index++) {
    const at = index * BS
    if (Buffer.compare(read.subarray(at, at + BS), model.subarray(at, at + BS)) !== 0) {
      assert.fail(`block ${index} does not hold what the last call to it wrote (${context})`)
    }
  }
}

for (const backend of ['file', 'level'] as const) {
  describe(`review r51: generation reservations under concurrent I/O (${backend})`, () => {
    it('writes, trims, reverts and a key re-seal, the reservation running out before every round: all seals reserved, call order kept', async () => {
      const seed = testSeed('R51_GENERATIONS_SEED', 51)
      const random = seededRandom(seed)
      const store = await openStore(backend)
      const engine = new BlockEngine(store, { blockSize: BS })
      try {
        let volume!: VolumeBlocks
        // Half the time, other writes take (almost) all of a new reservation while a call waits
        // for it: the call must wait again, not seal past it.
        const bumps = seededRandom(seed + 2)
        const { cipher, persisted, sealedAbove } = slowCipher(seededRandom(seed + 1), (generations) => {
          if (bumps() < 0.5) volume.nextGen = Math.max(volume.nextGen, generations - 1 - Math.floor(bumps() * 12))
        })
        volume = engine.attach(1, BLOCKS * BS)
        volume.cipher = cipher
        const model = new Uint8Array(BLOCKS * BS)
        let snapshot: { gen: number, model: Uint8Array } | undefined
        let resealed: Promise<number> | undefined
        for (let r = 0; r < 30; r++) {
          // Just below the reservation: some calls of the round fit in it, the rest wait.
          volume.nextGen = Math.max(volume.nextGen, persisted() - 1 - Math.floor(random() * 12))
          if (r === 5) snapshot = { gen: await engine.snapshot(volume), model: Uint8Array.from(model) }
          let reverted: Promise<number> | undefined
          if (snapshot !== undefined && r % 4 === 2) {
            // Called in the middle of the round: the calls before it apply first, those after it on top.
            const head = round(engine, volume, model, random, 8, seed * 100 + r)
            // Its copy starts just below the reservation too (once the calls before it are done).
            reverted = engine.revert(volume, { gen: snapshot.gen, sizeBytes: BLOCKS * BS }, () => { volume.nextGen = Math.max(volume.nextGen, persisted() - 2) })
            model.set(snapshot.model)
            await Promise.all([head, round(engine, volume, model, random, 12, seed * 100 + r + 50), reverted])
          } else {
            if (r === 11) {
              // A data-key rotation: a new current key, and the re-seal of what the old one sealed, during the next rounds.
              cipher.addKey(2, generateKey(), { next: 0, limit: NONCE_RESERVATION }, true)
              resealed = engine.reseal(volume, 0, async () => {})
            }
            await round(engine, volume, model, random, 24, seed * 100 + r)
          }
          await checkModel(engine, volume, model, `round ${r}, seed ${seed}`)
        }
        await resealed
        cipher.dropKey(1)
        await checkModel(engine, volume, model, `after the re-seal, seed ${seed}`)
        assert.deepEqual(sealedAbove(), [], 'generations sealed at or above the persisted reservation')
      } finally {
        await engine.close()
        await store.close()
      }
    })
  })
}

describe('review r51: writes to one block apply in call order while the first waits', () => {
  it('a 10-block write waiting for a generation reservation, then a 1-block write to one of its blocks that needs none: the later one wins', async () => {
    const store = await openStore('file')
    const engine = new BlockEngine(store, { blockSize: BS })
    try {
      const volume = engine.attach(1, BLOCKS * BS)
      const { cipher, persisted } = slowCipher(() => 0.9)
      volume.cipher = cipher
      // 5 generations left: a 1-block write fits, a 10-block write waits.
      volume.nextGen = persisted() - 5
      assert.ok(cipher.ready(1, volume.nextGen + 1) && !cipher.ready(10, volume.nextGen + 10))
      const long = engine.write(volume, 0, patterned(1, 10 * BS), WriteConcern.WriteAcknowledged)
      const short = engine.writeBlock(volume, 4, patterned(2, BS), WriteConcern.WriteAcknowledged)
      const unaligned = engine.write(volume, 7 * BS + 100, patterned(3, 50), WriteConcern.WriteAcknowledged)
      await Promise.all([long, short, unaligned])
      assert.deepEqual(await engine.readBlock(volume, 4), patterned(2, BS))
      const block7 = patterned(1, 10 * BS).subarray(7 * BS, 8 * BS).slice()
      block7.set(patterned(3, 50), 100)
      assert.deepEqual(await engine.readBlock(volume, 7), block7)
      assert.deepEqual(await engine.readBlock(volume, 0), patterned(1, 10 * BS).subarray(0, BS))
    } finally {
      await engine.close()
      await store.close()
    }
  })

  it('a plain volume: random rounds of overlapping writes and trims (edge reads, claims) end as their call order says', async () => {
    const seed = testSeed('R51_PLAIN_ORDER_SEED', 151)
    const random = seededRandom(seed)
    const store = await openStore('file')
    const engine = new BlockEngine(store, { blockSize: BS })
    try {
      const volume = engine.attach(1, BLOCKS * BS)
      const model = new Uint8Array(BLOCKS * BS)
      for (let r = 0; r < 30; r++) {
        await round(engine, volume, model, random, 30, seed * 100 + r)
        await checkModel(engine, volume, model, `round ${r}, seed ${seed}`)
      }
    } finally {
      await engine.close()
      await store.close()
    }
  })
})
