// The NBD part of test/h42-concurrent-overlap.test.ts: two raw clients pipeline overlapping
// WRITE, WRITE_ZEROES (with and without NO_HOLE), TRIM, READ and FLUSH requests to one export;
// replies come in any order. NBD promises no order among requests in flight, so the model is the
// weaker one: every byte a read returns is the old value or one of a request covering it, and the
// end state of every block is what some serial order of the requests on it produces.

import assert from 'node:assert/strict'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GalleonFS } from '../../src/index.js'
import { NbdServer } from '../../backends/nbd/index.js'
import { seededRandom } from '../../src/seeded-random.js'
import { CMD_READ, CMD_WRITE_ZEROES, NO_HOLE, NbdClient, SIMPLE_REPLY_MAGIC } from './nbd-client.js'
import { Clock, applyOp, checkFinal, describeOp, type Op } from './h42-model.js'

const CMD_WRITE = 1
const CMD_FLUSH = 3
const CMD_TRIM = 4

interface Pending { op?: Op, read?: { offset: number, length: number, calledAt: number, resolvedAt: number, seen?: Buffer }, resolve: () => void, error?: number }

/** A client that reads replies in a loop and matches them to requests by handle. */
class Pipelined {
  readonly pending = new Map<number, Pending>()
  #handles = 0
  #loop: Promise<void>
  #stopped = false
  constructor (readonly client: NbdClient, readonly clock: Clock, readonly tag: number) {
    this.#loop = this.#replies()
  }

  async #replies (): Promise<void> {
    while (!this.#stopped) {
      const head = await this.client.read(16, 60_000)
      if (head === undefined) return
      assert.equal(head.readUInt32BE(0), SIMPLE_REPLY_MAGIC)
      const error = head.readUInt32BE(4)
      const handle = Number(head.readBigUInt64BE(8))
      const pending = this.pending.get(handle)
      assert.ok(pending !== undefined, `a reply for handle ${handle}, which is not in flight`)
      this.pending.delete(handle)
      if (pending.read !== undefined && error === 0) {
        const data = await this.client.read(pending.read.length, 60_000)
        assert.ok(data !== undefined, 'the data of a read reply')
        pending.read.seen = data
      }
      pending.error = error
      const at = this.clock.tick()
      if (pending.op !== undefined) pending.op.resolvedAt = at
      if (pending.read !== undefined) pending.read.resolvedAt = at
      pending.resolve()
    }
  }

  send (type: number, offset: number, length: number, flags: number, data: Uint8Array | undefined, pending: Omit<Pending, 'resolve'>): Promise<number> {
    const handle = this.tag * 1_000_000 + ++this.#handles
    return new Promise<number>((resolve) => {
      const entry: Pending = { ...pending, resolve: () => { resolve(entry.error ?? -1) } }
      this.pending.set(handle, entry)
      this.client.request(type, handle, offset, length, flags, data)
    })
  }

  async stop (): Promise<void> {
    this.#stopped = true
    this.client.socket.destroy()
    await this.#loop.catch(() => {})
  }
}

export async function runNbdRounds (seed: number, rounds: number, dirs: string[]): Promise<void> {
  const random = seededRandom(seed ^ 0x42)
  const int = (below: number): number => Math.floor(random() * below)
  const dir = await mkdtemp(join(tmpdir(), 'galleon-h42-nbd-'))
  dirs.push(dir)
  const g = await GalleonFS.open({ storagePath: dir })
  const bs = g.blockSize
  const size = 12 * bs
  await g.createVolume({ name: 'n', sizeBytes: size })
  const server = await NbdServer.listen(g, { host: '127.0.0.1', port: 0 })
  const clock = new Clock()
  const clients: Pipelined[] = []
  try {
    for (let i = 0; i < 2; i++) {
      const client = await NbdClient.connect(server.port)
      await client.hello()
      await client.go('n')
      clients.push(new Pipelined(client, clock, i + 1))
    }
    let image = new Uint8Array(size)
    let ids = 0
    for (let round = 1; round <= rounds; round++) {
      const window = int(size / bs - 2)
      const ops: Op[] = []
      const reads: Array<NonNullable<Pending['read']>> = []
      const log: string[] = []
      const replies: Array<Promise<number>> = []
      const count = 8 + int(25)
      for (let i = 0; i < count; i++) {
        const client = clients[int(clients.length)] as Pipelined
        const offset = window * bs + int(3 * bs - 1)
        const length = 1 + int(Math.min(3 * bs - (offset - window * bs), Math.ceil(bs * 1.5)))
        const roll = random()
        if (roll < 0.15) {
          const read = { offset, length, calledAt: clock.tick(), resolvedAt: 0 }
          reads.push(read)
          log.push(`client ${client.tag}: READ @${offset} +${length} (t${read.calledAt})`)
          replies.push(client.send(CMD_READ, offset, length, 0, undefined, { read }))
          continue
        }
        if (roll < 0.2) {
          log.push(`client ${client.tag}: FLUSH`)
          replies.push(client.send(CMD_FLUSH, 0, 0, 0, undefined, {}))
          continue
        }
        const kind = roll < 0.7 ? 'write' : roll < 0.85 ? 'trim' : 'zero'
        const data = kind === 'write' ? Uint8Array.from({ length }, () => 1 + int(255)) : undefined
        const op: Op = { id: ++ids, volume: 'n', kind, offset, length, ...(data === undefined ? {} : { data }), calledAt: clock.tick(), resolvedAt: 0 }
        ops.push(op)
        const noHole = kind === 'zero' && random() < 0.5
        log.push(`client ${client.tag}: ${kind === 'write' ? 'WRITE' : kind === 'trim' ? 'TRIM' : `WRITE_ZEROES${noHole ? ' NO_HOLE' : ''}`} ${describeOp(op)}`)
        const type = kind === 'write' ? CMD_WRITE : kind === 'trim' ? CMD_TRIM : CMD_WRITE_ZEROES
        replies.push(client.send(type, offset, length, noHole ? NO_HOLE : 0, data, { op }))
        if (random() < 0.1) await new Promise((resolve) => setImmediate(resolve))
      }
      const fail = (why: string): never => assert.fail(`NBD, seed ${seed}, round ${round}: ${why}\nrequests of the round (send order):\n  ${log.join('\n  ')}`)
      const errors = await Promise.all(replies)
      if (errors.some((error) => error !== 0)) fail(`a request was answered with error ${errors.find((error) => error !== 0)}`)
      const seen = await g.read('n', 0, size)
      const wrong = checkFinal(image, ops, bs, seen, false)
      if (wrong !== undefined) fail(`the end state is what no serial order gives:\n${wrong}`)
      for (const read of reads) {
        const got = read.seen as Buffer
        for (let i = 0; i < read.length; i++) {
          const at = read.offset + i
          const allowed = new Set<number>([image[at] as number])
          for (const op of ops) if (at >= op.offset && at < op.offset + op.length) allowed.add(op.data === undefined ? 0 : op.data[at - op.offset] as number)
          if (!allowed.has(got[i] as number)) fail(`READ @${read.offset} +${read.length} (t${read.calledAt}..t${read.resolvedAt}): byte ${at} is ${got[i]}, allowed ${[...allowed].join('/')}`)
        }
      }
      // What a serial order in send order would give, when that is what the server did.
      const ordered = image.slice()
      for (const op of ops) applyOp(ordered, op)
      image = Uint8Array.from(seen)
      if (Buffer.compare(ordered, seen) !== 0) log.push('(the end state is not the send order)')
    }
  } finally {
    for (const client of clients) await client.stop()
    await server.close()
    await g.close()
  }
}
