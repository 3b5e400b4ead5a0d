// The operations of one round of the NBD fuzz test (test/nbd-model-fuzz.test.ts): requests on a
// connection (to the small volume, its snapshots or the large sparse volume), library calls, and
// connections that break the protocol, each drawn from the seeded generator with its expected
// outcome computed from the models before anything is sent. Requests of a round never race on
// the same bytes, except in an overlap round, where each byte read must be one the round allows.

import assert from 'node:assert/strict'
import type { GalleonFS } from '../../src/index.js'
import { WriteConcern } from '../../src/types.js'
import { CMD, EINVAL, ENOSPC, EPERM, FLAG, NbdFuzzConnection, REQUEST_MAGIC, STATE_HOLE, STATE_ZERO, TFLAG, type FuzzReply, type HaggleStep } from './nbd-fuzz-client.js'
import { type DenseView, type FuzzRandom, type ModelView, type SparseView } from './nbd-fuzz-model.js'

export const GiB = 2 ** 30
/** The server's largest READ or WRITE. */
export const MAX_REQUEST = 32 * 1024 * 1024

/** A read-only snapshot export: its model (fixed once taken) and the connections reading it. */
export interface SnapshotModel { name: string, view: DenseView, conns: NbdFuzzConnection[] }

/** A write (or a request that must leave its bytes alone) in flight in a round: for snapshots taken meanwhile. */
export interface WriteRecord { start: number, end: number, atomic: boolean, desc: string, sent: number, replied: number }

/** One generated operation: all its random choices are made before any runs. */
export interface Op { desc: string, run: () => Promise<void> }

/** Where a connection's requests go, and the model of its export. */
export interface Target { conn: NbdFuzzConnection, view: ModelView }

/** What a round's operations work with. */
export interface RoundContext {
  readonly g: GalleonFS
  readonly port: number
  readonly rand: FuzzRandom
  /** The small volume (its name is the view's label) and the large sparse one. */
  readonly live: DenseView
  readonly wide: SparseView
  readonly snapshots: readonly SnapshotModel[]
  /** A logical clock: which of two events came first. */
  readonly tick: () => number
  /** Counts operations by kind (for the summary). */
  readonly count: (kind: string) => void
  /** Options to send before choosing an export. */
  readonly haggling: () => HaggleStep[]
  /** The number of the next broken connection. */
  readonly nextVictim: () => number
}

/** The model as the round began, its writes, and the generators of its operations. */
export interface Round {
  readonly roundStart: Uint8Array
  readonly overlap: boolean
  readonly writes: WriteRecord[]
  unexplained: (got: Uint8Array, offset: number) => string | undefined
  nbdOp: (target: Target) => Op | undefined
  libraryOp: (view: ModelView) => Op | undefined
  victimOp: () => Op | undefined
}

/** Asserts that `actual` is `expected`, naming the first byte that differs. */
export function same (actual: Uint8Array | undefined, expected: Uint8Array, what: string): void {
  assert.ok(actual !== undefined, `${what}: no data`)
  if (actual.byteLength !== expected.byteLength) assert.fail(`${what}: ${actual.byteLength} bytes, expected ${expected.byteLength}`)
  if (Buffer.compare(actual, expected) === 0) return
  const at = actual.findIndex((b, i) => b !== expected[i])
  assert.fail(`${what}: differs from the model first at byte ${at} of the range (got ${actual[at]}, expected ${expected[at]})`)
}

/** Starts round `round`: claims reset, the model as it begins kept, and the operation generators. */
export function planRound (ctx: RoundContext, round: number): Round {
  const { g, port, rand, live, wide, snapshots, tick, count, haggling, nextVictim } = ctx
  const int = (n: number): number => rand.int(n)
  const chance = (p: number): boolean => rand.chance(p)
  const pick = <T>(items: readonly T[]): T => rand.pick(items)
  const VOLUME = live.label
  const SIZE = live.size
  const roundStart = live.data.slice()
  // Now and then a round where requests to the small volume overlap at will: each byte a read
  // returns, and each byte the volume holds afterwards, is then what it held before the round
  // or what one of the round's writes, trims or zeroings put there.
  const overlap = chance(0.1)
  const overlapping: Array<{ start: number, end: number, data: Uint8Array | undefined, desc: string }> = []
  /** Whether `got` (bytes at `offset`) is, byte by byte, one of the values the round allows; else a description of the first that is not. */
  const unexplained = (got: Uint8Array, offset: number): string | undefined => {
    for (let i = 0; i < got.byteLength; i++) {
      const at = offset + i
      const value = got[i] as number
      if (value === roundStart[at]) continue
      if (overlapping.some((w) => at >= w.start && at < w.end && (w.data === undefined ? value === 0 : w.data[at - w.start] === value))) continue
      return `byte ${at} reads ${value}: it held ${roundStart[at]} before the round, and no write of the round covering it (${overlapping.filter((w) => at >= w.start && at < w.end).map((w) => w.desc).join('; ') || 'none'}) put that there`
    }
    return undefined
  }
  live.resetClaims(overlap)
  for (const view of [wide, ...snapshots.map((snapshot) => snapshot.view)]) view.resetClaims()
  const writes: WriteRecord[] = []
  /** A write record: the bytes an op may change (or must leave alone), for snapshots taken meanwhile. */
  const recordWrite = (view: ModelView, start: number, end: number, atomic: boolean, desc: string): WriteRecord => {
    const record = { start, end, atomic, desc, sent: Infinity, replied: Infinity }
    if (view === live && end > start) writes.push(record)
    return record
  }
  const check = async (reply: Promise<FuzzReply>, expectErrors: number[], what: string): Promise<FuzzReply> => {
    const got = await reply
    assert.ok(expectErrors.includes(got.error), `${what}: error ${got.error} (${got.message}), expected one of ${expectErrors.join('/')}`)
    return got
  }

  const nbdOp = ({ conn: c, view }: Target): Op | undefined => {
    const tag = `r${round} ${c.label}`
    if (overlap && view === live) return overlapOp(c, tag)
    const r = rand.next()
    const readOnly = view.readOnly
    // Most of a small export; up to a GiB of the large one (trims), up to 4 GiB (block status).
    const wideMeta = view === wide ? GiB : view.size
    if (r < 0.3) { // READ
      const range = view.pickRange(rand, false, view === wide ? 0 : view.size)
      if (range === undefined) return undefined
      const [offset, length] = range
      const flags = (chance(0.2) ? FLAG.FUA : 0) | ((c.flags & TFLAG.SEND_DF) !== 0 && chance(0.3) ? FLAG.DF : 0)
      const expected = view.read(offset, length)
      const desc = `${tag} READ ${offset}+${length} flags ${flags}`
      count('read')
      return { desc, run: async () => { same((await check(c.send(CMD.READ, offset, length, flags), [0], desc)).data, expected, desc) } }
    }
    if (r < 0.55) { // WRITE
      const flags = chance(0.3) ? FLAG.FUA : 0
      if (readOnly) {
        const length = 1 + int(8192)
        const offset = int(view.size - length + 1)
        const data = rand.payload(length)
        const desc = `${tag} WRITE (read-only) ${offset}+${length}`
        count('write-read-only')
        return { desc, run: async () => { await check(c.send(CMD.WRITE, offset, length, flags, data), [EPERM], desc) } }
      }
      const range = view.pickRange(rand, true)
      if (range === undefined) return undefined
      const [offset, length] = range
      const data = rand.payload(length)
      view.write(offset, data)
      const desc = `${tag} WRITE ${offset}+${length} flags ${flags}`
      const record = recordWrite(view, offset, offset + length, true, desc)
      count('write')
      return { desc, run: async () => { record.sent = tick(); await check(c.send(CMD.WRITE, offset, length, flags, data), [0], desc); record.replied = tick() } }
    }
    if (r < 0.67) { // BLOCK_STATUS
      const range = view.pickRange(rand, false, view === wide ? 2 ** 32 - 1 : view.size)
      if (range === undefined) return undefined
      const [offset, length] = range
      const flags = (chance(0.3) ? FLAG.REQ_ONE : 0) | (chance(0.1) ? FLAG.FUA : 0)
      const desc = `${tag} BLOCK_STATUS ${offset}+${length} flags ${flags}`
      count('block-status')
      if (c.contextId === undefined) return { desc, run: async () => { await check(c.send(CMD.BLOCK_STATUS, offset, length, flags), [EINVAL], desc) } }
      // The view cannot change under it (claimed), so it is checked against the view when the reply comes.
      return {
        desc,
        run: async () => {
          const { extents } = await check(c.send(CMD.BLOCK_STATUS, offset, length, flags), [0], desc)
          let at = 0
          let previous: number | undefined
          for (const extent of extents ?? []) {
            assert.ok((extent.flags & ~(STATE_HOLE | STATE_ZERO)) === 0, `${desc}: unknown status flags ${extent.flags}`)
            // A hole without the zero bit is allowed by proto.md, but this server says both or neither.
            assert.equal((extent.flags & STATE_HOLE) !== 0, (extent.flags & STATE_ZERO) !== 0, `${desc}: status ${extent.flags}`)
            // proto.md: consecutive descriptors SHOULD differ in status (runs merged).
            assert.notEqual(extent.flags, previous, `${desc}: two consecutive extents with status ${extent.flags}`)
            previous = extent.flags
            const data = (extent.flags & STATE_ZERO) !== 0 ? view.firstData(offset + at, extent.length) : -1
            if (data >= 0) assert.fail(`${desc}: ${offset + at}+${extent.length} reported as a zero hole, but the model holds data at ${data}`)
            at += extent.length
          }
          // REQ_ONE: one extent, maybe shorter than asked; otherwise this server describes up to 1 GiB.
          if ((flags & FLAG.REQ_ONE) !== 0) assert.ok(at > 0 && at <= length, `${desc}: one extent of ${at} bytes`)
          else assert.equal(at, Math.min(length, GiB), `${desc}: extents cover ${at} of ${length} bytes`)
        }
      }
    }
    if (r < 0.85) { // TRIM (below 0.75) or WRITE_ZEROES
      const zeroes = r >= 0.75
      const type = zeroes ? CMD.WRITE_ZEROES : CMD.TRIM
      const name = zeroes ? 'WRITE_ZEROES' : 'TRIM'
      let flags = (chance(0.25) ? FLAG.FUA : 0) | (zeroes && chance(0.4) ? FLAG.NO_HOLE : 0)
      if (readOnly) {
        const length = 1 + int(8192)
        const offset = int(view.size - length + 1)
        const desc = `${tag} ${name} (read-only) ${offset}+${length}`
        count('trim-read-only')
        return { desc, run: async () => { await check(c.send(type, offset, length, flags), [EPERM], desc) } }
      }
      // NO_HOLE writes real zeros: not a GiB of them.
      const range = view.pickRange(rand, true, (flags & FLAG.NO_HOLE) !== 0 ? Math.min(view.size, 2 * 1024 * 1024 + 3) : wideMeta)
      if (range === undefined) return undefined
      const [offset, length] = range
      const fastZero = zeroes && chance(0.08)
      if (fastZero) flags |= FLAG.FAST_ZERO
      // FAST_ZERO is not advertised: refused with EINVAL, the data left alone.
      const refused = fastZero && (c.flags & TFLAG.SEND_FAST_ZERO) === 0
      if (!refused) view.zero(offset, length)
      const desc = `${tag} ${name} ${offset}+${length} flags ${flags}`
      const record = recordWrite(view, offset, offset + length, refused, desc)
      count(zeroes ? (refused ? 'fast-zero-refused' : 'write-zeroes') : 'trim')
      return { desc, run: async () => { record.sent = tick(); await check(c.send(type, offset, length, flags), refused ? [EINVAL] : [0], desc); record.replied = tick() } }
    }
    if (r < 0.88) { // FLUSH
      const flags = chance(0.2) ? FLAG.FUA : 0
      const desc = `${tag} FLUSH`
      count('flush')
      return { desc, run: async () => { await check(c.send(CMD.FLUSH, 0, 0, flags), [0], desc) } }
    }
    if (r < 0.91) { // zero length, anywhere up to the end
      const offset = int(view.size + 1)
      const type = pick([CMD.READ, CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES, CMD.BLOCK_STATUS])
      const desc = `${tag} zero-length ${type} at ${offset}`
      count('zero-length')
      const writing = type === CMD.WRITE || type === CMD.TRIM || type === CMD.WRITE_ZEROES
      const expected = type === CMD.BLOCK_STATUS ? [EINVAL] : writing && readOnly ? [EPERM] : [0]
      return {
        desc,
        run: async () => {
          const got = await check(c.send(type, offset, 0, 0, type === CMD.WRITE ? new Uint8Array(0) : undefined), expected, desc)
          if (type === CMD.READ) assert.equal(got.data?.byteLength, 0, `${desc}: data`)
        }
      }
    }
    if (r < 0.95) { // past the end
      const [offset, length] = view.pastEnd(rand)
      const type = pick([CMD.READ, CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES, CMD.BLOCK_STATUS])
      // A write's payload is sent whole (up to the 32 MiB limit, past which the frame itself is refused).
      const data = type === CMD.WRITE ? rand.payload(Math.min(length, 64 * 1024)) : undefined
      if (type === CMD.WRITE && length > 64 * 1024) return undefined
      const desc = `${tag} past-the-end ${type} ${offset}+${length}`
      // proto.md: ENOSPC for writes past the end, EINVAL for reads, trims and block status;
      // on a read-only export EPERM fits writes as well.
      const range = type === CMD.WRITE || type === CMD.WRITE_ZEROES ? ENOSPC : EINVAL
      const expected = readOnly && type !== CMD.READ && type !== CMD.BLOCK_STATUS ? [EPERM, range] : [range]
      // The bytes inside the export must be left alone: claimed, so nothing else writes them meanwhile.
      const inside = offset < BigInt(view.size) ? Number(offset) : view.size
      if (!readOnly && !view.claim(inside, view.size, true)) return undefined
      const record = recordWrite(view, inside, view.size, true, desc)
      count('past-end')
      return { desc, run: async () => { record.sent = tick(); await check(c.send(type, offset, length, 0, data), expected, desc); record.replied = tick() } }
    }
    if (r < 0.97 && view === wide) { // the largest READ there is, and one byte more
      const over = chance(0.5)
      const length = MAX_REQUEST + (over ? 1 : 0)
      const offset = Math.min(view.size - length, pick(view.hot) - int(MAX_REQUEST))
      if (!view.claim(offset, offset + length, false)) return undefined
      const expected = over ? undefined : view.read(offset, length)
      const desc = `${tag} READ ${offset}+${length} (${over ? 'past' : 'at'} the 32 MiB limit)`
      count('read-limit')
      return {
        desc,
        run: async () => {
          const got = await check(c.send(CMD.READ, offset, length), over ? [EINVAL] : [0], desc)
          if (expected !== undefined) same(got.data, expected, desc)
        }
      }
    }
    if (r < 0.99) { // a flag that does not apply to the command: EINVAL, nothing done, the payload still consumed
      const type = pick([CMD.READ, CMD.WRITE, CMD.TRIM, CMD.FLUSH, CMD.BLOCK_STATUS])
      const wrong = pick(type === CMD.READ ? [FLAG.NO_HOLE, FLAG.REQ_ONE, 1 << 7] : type === CMD.BLOCK_STATUS ? [FLAG.NO_HOLE, FLAG.DF, 1 << 9] : [FLAG.NO_HOLE, FLAG.DF, FLAG.REQ_ONE, 1 << 15])
      const length = 1 + int(8192)
      const offset = int(view.size - length + 1)
      const data = type === CMD.WRITE ? rand.payload(length) : undefined
      if (!readOnly && !view.claim(offset, offset + length, true)) return undefined
      const desc = `${tag} bad flags ${wrong} on ${type} ${offset}+${length}`
      const record = recordWrite(view, offset, offset + length, true, desc)
      count('bad-flags')
      return {
        desc,
        run: async () => {
          record.sent = tick()
          await check(c.send(type, offset, type === CMD.FLUSH ? 0 : length, wrong, data), readOnly && type === CMD.WRITE ? [EINVAL, EPERM] : [EINVAL], desc)
          record.replied = tick()
        }
      }
    }
    // A command the server does not know (NBD_CMD_CACHE is not advertised either).
    const type = pick([CMD.CACHE, 8, 42, 0xffff])
    const offset = int(view.size)
    const length = int(4096)
    const desc = `${tag} unknown command ${type}`
    count('unknown-command')
    return { desc, run: async () => { await check(c.send(type, offset, length), [EINVAL], desc) } }
  }

  /** A request of an overlap round: READ, WRITE, TRIM or WRITE_ZEROES anywhere in the small volume. */
  const overlapOp = (c: NbdFuzzConnection | undefined, tag: string): Op | undefined => {
    const r = rand.next()
    const range = live.pickRange(rand, true)
    if (range === undefined) return undefined
    const [offset, length] = range
    if (r < 0.4) {
      const flags = c !== undefined && (c.flags & TFLAG.SEND_DF) !== 0 && chance(0.3) ? FLAG.DF : 0
      const desc = `${tag} READ ${offset}+${length} flags ${flags} (overlapping)`
      count('overlap read')
      return {
        desc,
        run: async () => {
          const data = c === undefined ? await g.read(VOLUME, offset, length) : (await check(c.send(CMD.READ, offset, length, flags), [0], desc)).data
          assert.ok(data !== undefined && data.byteLength === length, `${desc}: ${data?.byteLength} bytes`)
          const wrong = unexplained(data, offset)
          if (wrong !== undefined) assert.fail(`${desc}: ${wrong}`)
        }
      }
    }
    const zeroing = r >= 0.75
    const type = r < 0.75 ? CMD.WRITE : r < 0.87 ? CMD.TRIM : CMD.WRITE_ZEROES
    const flags = (chance(0.2) ? FLAG.FUA : 0) | (type === CMD.WRITE_ZEROES && chance(0.4) ? FLAG.NO_HOLE : 0)
    const data = zeroing ? undefined : rand.payload(length)
    const name = c === undefined ? (zeroing ? 'g.trim' : 'g.write') : type === CMD.WRITE ? 'WRITE' : type === CMD.TRIM ? 'TRIM' : 'WRITE_ZEROES'
    const desc = `${tag} ${name} ${offset}+${length} flags ${flags} (overlapping)`
    overlapping.push({ start: offset, end: offset + length, data, desc })
    count('overlap write')
    return {
      desc,
      run: async () => {
        if (c !== undefined) await check(c.send(type, offset, length, flags, data), [0], desc)
        else if (data !== undefined) await g.write(VOLUME, offset, data)
        else await g.trim(VOLUME, offset, length)
      }
    }
  }

  const libraryOp = (view: ModelView): Op | undefined => {
    const tag = `r${round} lib ${view.label}`
    if (overlap && view === live) return overlapOp(undefined, tag)
    const r = rand.next()
    if (r < 0.4) {
      const range = view.pickRange(rand, true)
      if (range === undefined) return undefined
      const [offset, length] = range
      const data = rand.payload(length)
      view.write(offset, data)
      const concern = chance(0.2) ? WriteConcern.WriteDurable : WriteConcern.WriteAcknowledged
      const desc = `${tag} g.write ${offset}+${length} ${concern}`
      const record = recordWrite(view, offset, offset + length, true, desc)
      count('g.write')
      return { desc, run: async () => { record.sent = tick(); await g.write(view.label, offset, data, concern); record.replied = tick() } }
    }
    if (r < 0.5) {
      const range = view.pickRange(rand, true)
      if (range === undefined) return undefined
      const [offset, length] = range
      view.zero(offset, length)
      const desc = `${tag} g.trim ${offset}+${length}`
      const record = recordWrite(view, offset, offset + length, false, desc)
      count('g.trim')
      return { desc, run: async () => { record.sent = tick(); await g.trim(view.label, offset, length); record.replied = tick() } }
    }
    if (r < 0.8) {
      const range = view.pickRange(rand, false)
      if (range === undefined) return undefined
      const [offset, length] = range
      const expected = view.read(offset, length)
      const desc = `${tag} g.read ${offset}+${length}`
      count('g.read')
      return { desc, run: async () => { same(await g.read(view.label, offset, length), expected, desc) } }
    }
    if (r < 0.9 && snapshots.length > 0) {
      const s = pick(snapshots)
      const range = s.view.pickRange(rand, false)
      if (range === undefined) return undefined
      const [offset, length] = range
      const expected = s.view.read(offset, length)
      const desc = `${tag} g.read ${VOLUME}@${s.name} ${offset}+${length}`
      count('g.read-snapshot')
      return { desc, run: async () => { same(await g.read({ volume: VOLUME, snapshot: s.name }, offset, length), expected, desc) } }
    }
    const range = view.pickRange(rand, false)
    if (range === undefined) return undefined
    const [offset, length] = range
    const desc = `${tag} g.getAllocation ${offset}+${length}`
    count('g.getAllocation')
    return {
      desc,
      run: async () => {
        for (const extent of await g.getAllocation(view.label, offset, length)) {
          const data = extent.allocated ? -1 : view.firstData(extent.offset, extent.length)
          if (data >= 0) assert.fail(`${desc}: ${extent.offset}+${extent.length} reported unallocated, but the model holds data at ${data}`)
        }
      }
    }
  }

  /**
   * A connection of its own that breaks the protocol after some valid writes: their replies
   * must come and the writes land; what follows the broken frame must not be done; the
   * connection ends; the others do not notice.
   */
  const victimOp = (): Op | undefined => {
    const kind = pick(['bad-magic', 'truncated-header', 'truncated-payload', 'too-long', 'abrupt', 'disc'] as const)
    const label = `V${nextVictim()}`
    const desc = `r${round} ${label} ${kind}`
    const structured = chance(0.5)
    const haggle = haggling()
    const valid: Array<{ offset: number, data: Uint8Array, record: WriteRecord }> = []
    for (let i = 1 + int(4); i > 0; i--) {
      const range = live.pickRange(rand, true)
      if (range === undefined) continue
      const [offset, length] = range
      const data = rand.payload(length)
      live.write(offset, data)
      valid.push({ offset, data, record: recordWrite(live, offset, offset + length, true, `${desc} valid write ${offset}+${length}`) })
    }
    // A write the server must never do: behind the broken frame, or its own payload cut short.
    const ignored = live.pickRange(rand, true)
    const ignoredData = ignored === undefined ? undefined : rand.payload(ignored[1])
    const ignoredRecord = ignored === undefined ? undefined : recordWrite(live, ignored[0], ignored[0] + ignored[1], true, `${desc} ignored write`)
    const badMagic = pick([0, 0x25609514, 0x67446698, (REQUEST_MAGIC ^ 0xffffffff) >>> 0])
    const cut = rand.next()
    const tooLong = MAX_REQUEST + 1 + int(1 << 30)
    count(`victim ${kind}`)
    return {
      desc: `${desc}: ${valid.map((v) => `${v.offset}+${v.data.byteLength}`).join(' ')} then ${ignored === undefined ? '-' : ignored.join('+')}`,
      run: async () => {
        const c = await NbdFuzzConnection.open(port, label, { exportName: VOLUME, structured, allocation: false, allowHalfOpen: true, haggle, expectedSize: SIZE })
        try {
          for (const v of valid) v.record.sent = tick()
          if (ignoredRecord !== undefined) ignoredRecord.sent = tick()
          const replies = valid.map(async (v) => {
            const reply = await c.send(CMD.WRITE, v.offset, v.data.byteLength, 0, v.data)
            assert.equal(reply.error, 0, `${desc}: a valid write before the broken frame`)
            v.record.replied = tick()
          })
          // Awaited below; failing before that must not leave them unhandled.
          for (const reply of replies) reply.catch(() => {})
          if (kind === 'abrupt') await Promise.all(replies)
          const ignoredFrame = ignored === undefined ? Buffer.alloc(0) : NbdFuzzConnection.frame(CMD.WRITE, c.nextHandle(), BigInt(ignored[0]), ignored[1], 0, ignoredData)
          switch (kind) {
            case 'bad-magic': {
              const bad = NbdFuzzConnection.frame(CMD.WRITE, c.nextHandle(), 0n, 0)
              bad.writeUInt32BE(badMagic, 0)
              c.socket.write(Buffer.concat([bad, ignoredFrame]))
              break
            }
            case 'truncated-header':
              c.socket.write(NbdFuzzConnection.frame(CMD.READ, c.nextHandle(), 0n, 4096).subarray(0, 1 + Math.floor(cut * 27)))
              c.socket.end()
              break
            case 'truncated-payload':
              if (ignored !== undefined) c.socket.write(ignoredFrame.subarray(0, 28 + Math.floor(cut * ignored[1])))
              c.socket.end()
              break
            case 'too-long':
              c.socket.write(Buffer.concat([NbdFuzzConnection.frame(CMD.WRITE, c.nextHandle(), 0n, tooLong), ignoredFrame]))
              break
            case 'disc':
              // NBD_CMD_DISC with writes in flight: they are done and answered; what the client
              // (wrongly) sends after it is dropped.
              c.socket.write(Buffer.concat([NbdFuzzConnection.frame(CMD.DISC, c.nextHandle(), 0n, 0), ignoredFrame]))
              break
            case 'abrupt':
              c.socket.write(ignoredFrame.subarray(0, Math.floor(cut * Math.min(ignoredFrame.byteLength, 28))))
              c.socket.destroy()
              break
          }
          await Promise.all(replies)
          if (kind !== 'abrupt') await c.closedByServer()
          if (ignoredRecord !== undefined) ignoredRecord.replied = tick()
          assert.deepEqual(c.violations, [], `${desc}: protocol violations`)
        } finally {
          c.socket.destroy()
        }
      }
    }
  }

  return { roundStart, overlap, writes, unexplained, nbdOp, libraryOp, victimOp }
}
