// Seeded random traffic against the NBD server, checked against plain models of what each export
// reads: several raw-socket connections at once (structured and simple replies, base:allocation or
// not, NBD_OPT_GO and NBD_OPT_EXPORT_NAME) to a small volume, to read-only snapshots of it
// (`volume@snapshot`) and to a large sparse volume (offsets past 2^32, the 32 MiB request limit,
// GiB-long trims and block status), many requests in flight on each and answered in any order
// (matched by handle); writes, reads and trims through the library API meanwhile; snapshots taken
// while requests are in flight; and connections that break the protocol next to the others.
//
// Requests in flight together never touch the same bytes when one of them writes, so each reply
// has exactly one right answer (except in overlap rounds, where each byte read or left behind must
// be one the round's writes allow); a snapshot taken among writes in flight must hold each write
// wholly or not at all, and exactly the model elsewhere. The client, the models and the operations
// are in test/support/nbd-fuzz-*.ts. GALLEON_FUZZ_SEED replays a run (a failure prints its seed and
// the last operations); GALLEON_FUZZ_STEPS sets the number of requests (12,000: about 10 s).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../src/index.js'
import { NbdServer } from '../backends/nbd/index.js'
import { CMD, NbdFuzzConnection, TFLAG, type HaggleStep } from './support/nbd-fuzz-client.js'
import { BLOCK, DenseView, FuzzRandom, SparseView, type ModelView } from './support/nbd-fuzz-model.js'
import { GiB, planRound, same, type Op, type SnapshotModel, type Target } from './support/nbd-fuzz-ops.js'
import { testSeed } from './support/test-seed.js'

const SEED = testSeed('GALLEON_FUZZ_SEED', 20261206)
const STEPS = Number(process.env.GALLEON_FUZZ_STEPS ?? 12_000)
if (!Number.isSafeInteger(SEED) || !Number.isSafeInteger(STEPS)) throw new Error('GALLEON_FUZZ_SEED and GALLEON_FUZZ_STEPS must be integers')

/** The small volume: not a power of two, a little over the 1 MiB pieces of NO_HOLE zeroing. */
const SIZE = 259 * BLOCK
const VOLUME = 'fuzz'
/** The large sparse volume: 6 GiB and 3 blocks, so offsets cross 2^31 and 2^32. */
const WIDE = 'wide'
const WIDE_SIZE = 6 * 2 ** 30 + 3 * BLOCK
/** Snapshots kept exported at once; older ones are disconnected and deleted. */
const KEEP_SNAPSHOTS = 3

let root: string
let g: GalleonFS
let server: NbdServer | undefined

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'galleon-nbd-fuzz-'))
  g = await GalleonFS.open({ storagePath: join(root, 'storage') })
})
after(async () => {
  await server?.close()
  await g?.close()
  await rm(root, { recursive: true, force: true })
})

const rand = new FuzzRandom(SEED)
const int = (n: number): number => rand.int(n)
const chance = (p: number): boolean => rand.chance(p)
const pick = <T>(items: readonly T[]): T => rand.pick(items)

describe('NBD server against a model (seeded fuzz)', () => {
  it(`serves many connections, pipelined requests, snapshots and broken frames as the model says (seed ${SEED}, ${STEPS} requests)`, { timeout: 300_000 }, async (t) => {
    t.diagnostic(`GALLEON_FUZZ_SEED=${SEED} GALLEON_FUZZ_STEPS=${STEPS}`)
    await g.createVolume({ name: VOLUME, sizeBytes: SIZE })
    await g.createVolume({ name: WIDE, sizeBytes: WIDE_SIZE })
    server = await NbdServer.listen(g, { port: 0 })
    const port = server.port
    const live = new DenseView(VOLUME, new Uint8Array(SIZE), false)
    const wide = new SparseView(WIDE, WIDE_SIZE, false, [2 ** 31, 2 ** 32, 5 * GiB, WIDE_SIZE])
    const snapshots: SnapshotModel[] = []
    const log: string[] = []
    const note = (line: string): void => { log.push(line); if (log.length > 80) log.shift() }
    let clock = 0
    const tick = (): number => ++clock

    /** A few options before the export is chosen (drawn when the connection is planned). */
    const haggling = (): HaggleStep[] => Array.from({ length: int(4) }, (): HaggleStep => {
      const r = rand.next()
      if (r < 0.25) return { kind: 'list', withData: chance(0.2) }
      if (r < 0.55) return { kind: 'info', known: chance(0.8), requests: Array.from({ length: int(4) }, () => int(4)) }
      if (r < 0.7) return { kind: 'unknown', option: pick([4, 5, 11, 12, 0x4242, 0x7fffffff]) }
      return { kind: 'list-meta', queries: Array.from({ length: int(3) }, () => pick(['base:allocation', 'base:', 'qemu:dirty-bitmap:x', 'x-galleon:nothing'])) }
    })
    const open = async (label: string, view: ModelView, exportName: string, structured: boolean, allocation: boolean, via: 'go' | 'export-name' = 'go', zeroes = false, haggle: HaggleStep[] = []): Promise<NbdFuzzConnection> => {
      const c = await NbdFuzzConnection.open(port, label, { exportName, structured, allocation, via, zeroes, haggle, expectedSize: view.size })
      assert.equal(c.size, view.size, `${label}: export size`)
      assert.ok((c.flags & TFLAG.HAS_FLAGS) !== 0 && (c.flags & TFLAG.SEND_FLUSH) !== 0 && (c.flags & TFLAG.SEND_FUA) !== 0, `${label}: flags 0x${c.flags.toString(16)}`)
      assert.equal((c.flags & TFLAG.READ_ONLY) !== 0, view.readOnly, `${label}: read-only flag`)
      assert.equal((c.flags & TFLAG.SEND_TRIM) !== 0, !view.readOnly, `${label}: trim flag`)
      assert.equal((c.flags & TFLAG.SEND_WRITE_ZEROES) !== 0, !view.readOnly, `${label}: write zeroes flag`)
      assert.equal((c.flags & TFLAG.SEND_DF) !== 0, structured, `${label}: DF flag only with structured replies`)
      return c
    }
    const liveTargets: Target[] = [
      { conn: await open('L0', live, VOLUME, true, true), view: live },
      { conn: await open('L1', live, VOLUME, false, false, 'go', false, haggling()), view: live },
      { conn: await open('L2', live, VOLUME, true, true, 'export-name', true), view: live },
      { conn: await open('L3', live, VOLUME, true, false), view: live }
    ]
    const wideTargets: Target[] = [
      { conn: await open('W0', wide, WIDE, true, true), view: wide },
      { conn: await open('W1', wide, WIDE, true, false, 'go', false, haggling()), view: wide },
      { conn: await open('W2', wide, WIDE, false, false, 'export-name', true, haggling()), view: wide }
    ]
    const snapshotTargets = (): Target[] => snapshots.flatMap((s) => s.conns.map((conn) => ({ conn, view: s.view })))
    const everyConn = (): NbdFuzzConnection[] => [...liveTargets, ...wideTargets, ...snapshotTargets()].map((target) => target.conn)

    let requests = 0
    let round = 0
    let snapshotCount = 0
    let victims = 0
    const tally = new Map<string, number>()
    const count = (kind: string): void => { tally.set(kind, (tally.get(kind) ?? 0) + 1) }

    try {
      while (requests < STEPS) {
        round++
        const { roundStart, overlap, writes, unexplained, nbdOp, libraryOp, victimOp } = planRound({ g, port, rand, live, wide, snapshots, tick, count, haggling, nextVictim: () => ++victims }, round)
        const ops: Op[] = []
        // The round's operations, generated up front (so that a seed fixes them), then sent: mostly
        // a few over all connections; sometimes many; sometimes a burst on one connection, past the
        // 64 requests a connection may have in flight.
        const shape = rand.next()
        const size = shape < 0.08 ? 100 + int(200) : shape < 0.28 ? 20 + int(60) : 1 + int(16)
        const burst = shape < 0.08 ? pick([...liveTargets, ...wideTargets, ...snapshotTargets()]) : undefined
        for (let i = 0; i < size; i++) {
          const r = rand.next()
          const op = burst !== undefined
            ? nbdOp(burst)
            : r < 0.1
              ? libraryOp(chance(0.8) ? live : wide)
              : r < 0.25 && snapshots.length > 0
                ? nbdOp(pick(snapshotTargets()))
                : r < 0.4
                  ? nbdOp(pick(wideTargets))
                  : nbdOp(pick(liveTargets))
          if (op !== undefined) ops.push(op)
        }
        if (!overlap && chance(0.12)) { const op = victimOp(); if (op !== undefined) ops.splice(int(ops.length + 1), 0, op) }
        let taken: { name: string, called: number, resolved: number } | undefined
        if (!overlap && chance(0.04)) {
          const name = `s${++snapshotCount}${chance(0.3) ? '@x' : ''}`
          const state = { name, called: Infinity, resolved: Infinity }
          taken = state
          ops.splice(int(ops.length + 1), 0, {
            desc: `r${round} snapshot ${name}`,
            run: async () => { state.called = tick(); await g.createSnapshot(VOLUME, name); state.resolved = tick() }
          })
        }
        const yields = ops.map(() => chance(0.3))

        // Each op's outcome: undefined, or its error (never a rejection left waiting while more are sent).
        const running: Array<Promise<Error | undefined>> = []
        for (const [i, op] of ops.entries()) {
          note(op.desc)
          running.push(op.run().then(() => undefined, (err: unknown) => new Error(`${op.desc}: ${(err as Error).message}`, { cause: err })))
          if (yields[i] === true) await new Promise<void>((resolve) => setImmediate(resolve))
        }
        requests += ops.length
        let watchdog: NodeJS.Timeout | undefined
        const results = await Promise.race([
          Promise.all(running),
          new Promise<never>((_resolve, reject) => { watchdog = setTimeout(() => { reject(new Error(`round ${round} did not finish in 30 s; requests still waiting: ${everyConn().map((c) => `${c.label}:${c.pending}`).join(' ')}`)) }, 30_000) })
        ]).finally(() => { clearTimeout(watchdog) })
        const failed = results.find((result) => result !== undefined)
        if (failed !== undefined) throw failed
        for (const c of everyConn()) assert.deepEqual(c.violations, [], `${c.label}: protocol violations`)

        if (overlap) {
          // What the volume holds now, byte by byte one of the values the round allows, is the model from here on.
          const now = await g.read(VOLUME, 0, SIZE)
          const wrong = unexplained(now, 0)
          if (wrong !== undefined) assert.fail(`r${round} after the overlapping requests: ${wrong}`)
          live.data.set(now)
        }
        if (taken !== undefined) {
          // Each write in flight is wholly in the snapshot or wholly not (or, for trims, byte by byte
          // the old or the new); whatever was answered before it was taken is in; whatever was sent
          // after it was taken is not; everything else is the model as the round began.
          const image = await g.read({ volume: VOLUME, snapshot: taken.name }, 0, SIZE)
          const expected = roundStart.slice()
          for (const w of writes) {
            const got = image.subarray(w.start, w.end)
            const before = roundStart.subarray(w.start, w.end)
            const after = live.data.subarray(w.start, w.end)
            const isBefore = Buffer.compare(got, before) === 0
            const isAfter = Buffer.compare(got, after) === 0
            const what = `snapshot ${taken.name}, ${w.desc} (sent ${w.sent}, answered ${w.replied}; snapshot called ${taken.called}, done ${taken.resolved})`
            if (w.replied < taken.called) assert.ok(isAfter, `${what}: answered before the snapshot was taken, but not in it`)
            else if (w.sent > taken.resolved) assert.ok(isBefore, `${what}: sent after the snapshot was taken, but in it`)
            else if (w.atomic) assert.ok(isBefore || isAfter, `${what}: partly in the snapshot`)
            else assert.ok(got.every((b, i) => b === before[i] || b === after[i]), `${what}: neither old nor new bytes`)
            expected.set(got, w.start)
          }
          same(image, expected, `snapshot ${taken.name} outside the writes in flight`)
          const view = new DenseView(`${VOLUME}@${taken.name}`, expected, true)
          const s: SnapshotModel = { name: taken.name, view, conns: [] }
          const zeroes = chance(0.5)
          const [first, second] = [haggling(), haggling()]
          s.conns.push(await open(`S${snapshotCount}a`, view, view.label, true, true, 'go', false, first), await open(`S${snapshotCount}b`, view, view.label, false, false, 'export-name', zeroes, second))
          snapshots.push(s)
          note(`r${round} snapshot ${s.name} exported`)
          if (snapshots.length > KEEP_SNAPSHOTS) {
            const old = snapshots.shift() as SnapshotModel
            for (const c of old.conns) await c.disconnect()
            // Its clients are gone, so nothing holds it any more.
            await g.deleteSnapshot(VOLUME, old.name)
            note(`r${round} snapshot ${old.name} deleted`)
          }
        }
      }

      // Every view, whole (the large one where it was written), through NBD and through the library.
      const readAll = async (c: NbdFuzzConnection, view: ModelView, ranges: Array<[number, number]>): Promise<void> => {
        const pieces = ranges.map(async ([at, length]) => {
          const reply = await c.send(CMD.READ, at, length)
          assert.equal(reply.error, 0)
          same(reply.data, view.read(at, length), `${c.label} final read at ${at}`)
        })
        const failed = (await Promise.allSettled(pieces)).find((result) => result.status === 'rejected')
        if (failed !== undefined) throw (failed as PromiseRejectedResult).reason
      }
      const whole: Array<[number, number]> = []
      for (let at = 0; at < SIZE; at += 256 * 1024) whole.push([at, Math.min(256 * 1024, SIZE - at)])
      const written = (): Array<[number, number]> => [...wide.blocks.keys()].map((index) => [index * BLOCK, BLOCK])
      for (const { conn } of liveTargets) await readAll(conn, live, whole)
      for (const { conn } of wideTargets) await readAll(conn, wide, written())
      same(await g.read(VOLUME, 0, SIZE), live.data, 'the volume through g.read at the end')
      for (const s of snapshots) {
        for (const c of s.conns) await readAll(c, s.view, whole)
        same(await g.read({ volume: VOLUME, snapshot: s.name }, 0, SIZE), s.view.data, `snapshot ${s.name} through g.read at the end`)
      }
      // The broken connections are all gone; the server still takes new ones.
      const fresh = await open('F', live, VOLUME, true, true)
      await readAll(fresh, live, whole)
      await fresh.disconnect()
      const expectedConnections = everyConn().length
      for (const deadline = Date.now() + 10_000; server.connections !== expectedConnections && Date.now() < deadline;) await new Promise((resolve) => setTimeout(resolve, 10))
      assert.equal(server.connections, expectedConnections, 'connections the server still holds')
      for (const c of everyConn()) await c.disconnect()
      await server.close()
      server = undefined
      // Everything acknowledged survives closing and reopening the instance.
      await g.close()
      g = await GalleonFS.open({ storagePath: join(root, 'storage') })
      same(await g.read(VOLUME, 0, SIZE), live.data, 'the volume after reopening')
      for (const [at, length] of written()) same(await g.read(WIDE, at, length), wide.read(at, length), `${WIDE} at ${at} after reopening`)
      for (const s of snapshots) same(await g.read({ volume: VOLUME, snapshot: s.name }, 0, SIZE), s.view.data, `snapshot ${s.name} after reopening`)
      t.diagnostic(`${round} rounds, ${requests} operations, ${snapshotCount} snapshots, ${victims} broken connections: ${[...tally].sort().map(([k, v]) => `${k} ${v}`).join(', ')}`)
    } catch (err) {
      for (const c of everyConn()) c.socket.destroy()
      const message = `NBD model fuzz failed: GALLEON_FUZZ_SEED=${SEED} GALLEON_FUZZ_STEPS=${STEPS}, round ${round}\nlast operations:\n  ${log.join('\n  ')}\n${(err as Error).message}`
      throw new Error(message, { cause: err })
    }
  })
})
