// The building blocks of bench/replication-floor.ts, with no GalleonFS code: a group-committed file
// and the replica side of a bare replication protocol. Run as a script it is that bench's replica
// process: `replication-floor-peer.ts <directory>`.
//
// Wire format, little-endian, every frame length-prefixed:
//   write  (primary -> replica): u32 length (12 + 4096) | u32 slot | u32 sequence | u32 block | data
//   ack    (replica -> primary): u32 length (8) | u32 slot | u32 sequence
// A slot is one of the primary's writers, so at most one write per slot is in flight and the
// replica can ack by slot without keeping a table.
//
// As a script it says `port <n>` on stdout once it listens on 127.0.0.1, and answers control lines
// on stdin: `stats` (cumulative sync counters and the process's CPU time in ms, as JSON), `probe <ms>` (a one-at-a-time write and
// fdatasync loop, see syncProbe). It exits when its stdin closes, so a primary that dies, even by
// SIGKILL, never leaves it behind.

import { fdatasync, fsync, open, close, write } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

export const BLOCK = 4096
export const FILE_BYTES = 1024 * 1024 * 1024
export const FILE_BLOCKS = FILE_BYTES / BLOCK
export const WRITE_HEADER = 16
export const WRITE_FRAME = WRITE_HEADER + BLOCK
export const ACK_FRAME = 12

/** Cumulative counters of a GroupCommitFile; callers diff two snapshots. */
export interface SyncStats { syncs: number, syncedWrites: number, syncMs: number }

/**
 * A preallocated file whose writes become durable by group commit: each write is issued at once
 * (fs.write on the thread pool); when it has completed it joins the group waiting for the next
 * fdatasync. One fdatasync runs at a time and covers every write that completed before it started;
 * writes completing while it runs wait for the one after. This is the most a single file can get
 * out of fdatasync without O_DIRECT or io_uring, which Node does not offer.
 */
export class GroupCommitFile {
  readonly #fd: number
  #waiting: Array<() => void> = []
  #syncing = false
  readonly stats: SyncStats = { syncs: 0, syncedWrites: 0, syncMs: 0 }

  private constructor (fd: number) { this.#fd = fd }

  /**
   * Creates `path` filled with FILE_BYTES of zeros and synced: written, not merely fallocated, so
   * that the writes measured later overwrite allocated blocks and fdatasync has no extent or size
   * change to journal, as in a storage engine whose data file was set up in advance.
   */
  static async create (path: string): Promise<GroupCommitFile> {
    const fd = await promisify(open)(path, 'w+')
    const zeros = Buffer.alloc(8 * 1024 * 1024)
    const writeAt = promisify(write)
    for (let at = 0; at < FILE_BYTES; at += zeros.length) await writeAt(fd, zeros, 0, zeros.length, at)
    await promisify(fsync)(fd)
    return new GroupCommitFile(fd)
  }

  /** Writes `length` bytes of `source` from `start` at `offset`; calls `durable` once fdatasync covers it. */
  write (source: Buffer, start: number, length: number, offset: number, durable: () => void): void {
    write(this.#fd, source, start, length, offset, (err, written) => {
      if (err !== null) throw err
      if (written !== length) throw new Error(`short write: ${written} of ${length} bytes`)
      this.#waiting.push(durable)
      this.#syncNext()
    })
  }

  #syncNext (): void {
    if (this.#syncing || this.#waiting.length === 0) return
    this.#syncing = true
    const group = this.#waiting
    this.#waiting = []
    const started = performance.now()
    fdatasync(this.#fd, (err) => {
      if (err !== null) throw err
      this.stats.syncs++
      this.stats.syncedWrites += group.length
      this.stats.syncMs += performance.now() - started
      this.#syncing = false
      // Start the next sync before running the callbacks: they issue new writes, which should find
      // a sync in progress and wait for the next, not for one they could have joined.
      this.#syncNext()
      for (const durable of group) durable()
    })
  }

  async close (): Promise<void> { await promisify(close)(this.#fd) }

  /**
   * One write and fdatasync at a time, for `ms`: the device's sync latency with no grouping, to
   * compare one process syncing alone against two processes syncing at once. Resolves to the mean
   * latency in ms. Must not overlap other writes to this file.
   */
  async syncProbe (ms: number): Promise<number> {
    const data = Buffer.alloc(BLOCK, 1)
    const writeAt = promisify(write)
    const sync = promisify(fdatasync)
    const deadline = performance.now() + ms
    const start = performance.now()
    let done = 0
    while (performance.now() < deadline) {
      const block = Math.floor(Math.random() * FILE_BLOCKS)
      // Stamped as the bench stamps its writes (block number, non-zero sequence), so its check holds.
      data.writeUInt32LE(block, 0)
      await writeAt(this.#fd, data, 0, BLOCK, block * BLOCK)
      await sync(this.#fd)
      done++
    }
    return (performance.now() - start) / done
  }
}

/**
 * The replica side: accepts one primary at a time on 127.0.0.1 (random port), writes each frame's
 * block to its group-committed file and acks every write of a sync group in one socket write.
 */
export class ReplicaServer {
  readonly file: GroupCommitFile
  readonly #server: Server
  readonly #sockets = new Set<Socket>()

  private constructor (file: GroupCommitFile, server: Server) {
    this.file = file
    this.#server = server
    server.on('connection', (socket) => { this.#serve(socket) })
  }

  static async start (directory: string): Promise<ReplicaServer> {
    await mkdir(directory, { recursive: true })
    const replica = new ReplicaServer(await GroupCommitFile.create(join(directory, 'data')), createServer())
    replica.#server.listen(0, '127.0.0.1')
    await new Promise<void>((resolve, reject) => {
      replica.#server.once('listening', resolve)
      replica.#server.once('error', reject)
    })
    return replica
  }

  get port (): number { return (this.#server.address() as AddressInfo).port }

  #serve (socket: Socket): void {
    this.#sockets.add(socket)
    socket.setNoDelay(true)
    socket.on('close', () => { this.#sockets.delete(socket) })
    socket.on('error', () => { socket.destroy() })
    // Acks of writes that became durable in the same sync are gathered and sent in one write once
    // the group's callbacks have all run (process.nextTick runs after them).
    let acks: Buffer[] = []
    const flushAcks = (): void => {
      const batch = acks
      acks = []
      if (!socket.destroyed) socket.write(batch.length === 1 ? batch[0] as Buffer : Buffer.concat(batch))
    }
    let pending: Buffer | undefined
    socket.on('data', (chunk: Buffer) => {
      const data = pending === undefined ? chunk : Buffer.concat([pending, chunk])
      let at = 0
      while (data.length - at >= 4) {
        const length = data.readUInt32LE(at)
        if (length !== WRITE_FRAME - 4) {
          socket.destroy(new Error(`bad frame length ${length}`))
          return
        }
        if (data.length - at < WRITE_FRAME) break
        const slot = data.readUInt32LE(at + 4)
        const sequence = data.readUInt32LE(at + 8)
        const block = data.readUInt32LE(at + 12)
        // The block is written straight from the received chunk (no copy); the chunk stays
        // referenced until fs.write is done with it.
        this.file.write(data, at + WRITE_HEADER, BLOCK, block * BLOCK, () => {
          const ack = Buffer.allocUnsafe(ACK_FRAME)
          ack.writeUInt32LE(ACK_FRAME - 4, 0)
          ack.writeUInt32LE(slot, 4)
          ack.writeUInt32LE(sequence, 8)
          if (acks.push(ack) === 1) process.nextTick(flushAcks)
        })
        at += WRITE_FRAME
      }
      pending = at === data.length ? undefined : data.subarray(at)
    })
  }

  async close (): Promise<void> {
    for (const socket of this.#sockets) socket.destroy()
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve() }) })
    await this.file.close()
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const directory = process.argv[2]
  if (directory === undefined) throw new Error('usage: replication-floor-peer.ts <directory>')
  const replica = await ReplicaServer.start(directory)
  const lines = createInterface({ input: process.stdin })
  lines.on('line', (line) => {
    const [command, argument] = line.split(' ')
    if (command === 'stats') {
      const cpu = process.cpuUsage()
      process.stdout.write(JSON.stringify({ ...replica.file.stats, cpuMs: (cpu.user + cpu.system) / 1000 }) + '\n')
    }
    else if (command === 'probe') {
      replica.file.syncProbe(Number(argument)).then((ms) => { process.stdout.write(`${ms}\n`) }, (err: unknown) => { console.error(err); process.exit(1) })
    }
  })
  lines.on('close', () => {
    replica.close().then(() => process.exit(0), (err: unknown) => { console.error(err); process.exit(1) })
  })
  process.stdout.write(`port ${replica.port}\n`)
}
