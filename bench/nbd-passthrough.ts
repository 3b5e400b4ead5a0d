// A reference for bench/mounts.ts: about the least an NBD server written for Node.js can do while
// it keeps the bytes. It speaks just enough of the protocol for fio's nbd engine (libnbd): the fixed
// newstyle handshake with NBD_OPT_GO / NBD_OPT_INFO / NBD_OPT_EXPORT_NAME, and READ, WRITE, FLUSH
// and DISC with simple replies; each request is a synchronous pread() or pwrite() on one file, made
// on the event loop's thread as soon as its bytes are in (no checksums, no journal, no snapshots, no
// copy-on-write). Against qemu-nbd it shows what a single-threaded Node.js server that stores the
// bytes can reach on this machine at all, the bound of any such server, GalleonFS's included (as the
// passthrough FUSE file system does for the FUSE part). Not a product: it trusts its client.

import { closeSync, fdatasyncSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs'
import { createServer, type Socket } from 'node:net'
import {
  CMD_DISC, CMD_FLUSH, CMD_READ, CMD_WRITE, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO_EXPORT, NBDMAGIC, OPTION_REPLY_MAGIC,
  OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, REP_ACK, REP_ERR_UNSUP, REP_INFO, SIMPLE_REPLY_MAGIC, TFLAG_HAS_FLAGS, TFLAG_SEND_FLUSH
} from '../backends/nbd/protocol.js'

/** Bytes received and not yet taken, as the chunks they came in. */
class Incoming {
  #chunks: Buffer[] = []
  #bytes = 0

  push (chunk: Buffer): void {
    this.#chunks.push(chunk)
    this.#bytes += chunk.byteLength
  }

  get bytes (): number { return this.#bytes }

  /** The next `n` bytes (n <= bytes): a view when one chunk holds them, else a copy. */
  take (n: number): Buffer {
    this.#bytes -= n
    const head = this.#chunks[0] as Buffer
    if (head.byteLength >= n) {
      if (head.byteLength === n) this.#chunks.shift()
      else this.#chunks[0] = head.subarray(n)
      return head.subarray(0, n)
    }
    const out = Buffer.allocUnsafe(n)
    let at = 0
    while (at < n) {
      const chunk = this.#chunks[0] as Buffer
      const part = Math.min(chunk.byteLength, n - at)
      chunk.copy(out, at, 0, part)
      at += part
      if (part === chunk.byteLength) this.#chunks.shift()
      else this.#chunks[0] = chunk.subarray(part)
    }
    return out
  }
}

const TFLAGS = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH

function optionReply (socket: Socket, option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
  const head = Buffer.alloc(20)
  head.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0)
  head.writeUInt32BE(option, 8)
  head.writeUInt32BE(type, 12)
  head.writeUInt32BE(data.byteLength, 16)
  socket.write(data.byteLength === 0 ? head : Buffer.concat([head, data]))
}

function simpleReply (socket: Socket, handle: Buffer, error: number, data?: Buffer): void {
  const head = Buffer.allocUnsafe(16)
  head.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0)
  head.writeUInt32BE(error, 4)
  handle.copy(head, 8)
  if (data === undefined) {
    socket.write(head)
    return
  }
  socket.cork()
  socket.write(head)
  socket.write(data)
  socket.uncork()
}

/** Serves `file` (made `size` bytes long) as the only export, on a free port of 127.0.0.1. */
export async function startPassthroughNbd (file: string, size: number): Promise<{ port: number, close: () => Promise<void> }> {
  const fd = openSync(file, 'w+')
  ftruncateSync(fd, size)
  const sockets = new Set<Socket>()
  const serve = (socket: Socket): void => {
    sockets.add(socket)
    socket.setNoDelay(true)
    socket.on('error', () => {})
    socket.on('close', () => sockets.delete(socket))
    const hello = Buffer.alloc(18)
    hello.writeBigUInt64BE(NBDMAGIC, 0)
    hello.writeBigUInt64BE(IHAVEOPT, 8)
    hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16)
    socket.write(hello)
    const incoming = new Incoming()
    let phase: 'flags' | 'options' | 'transmission' = 'flags'
    let noZeroes = false
    // The option or request whose data is still awaited.
    let pending: { option: number, length: number } | { type: number, handle: Buffer, offset: number, length: number } | undefined
    socket.on('data', (chunk: Buffer) => {
      incoming.push(chunk)
      for (;;) {
        if (phase === 'flags') {
          if (incoming.bytes < 4) return
          noZeroes = (incoming.take(4).readUInt32BE(0) & FLAG_NO_ZEROES) !== 0
          phase = 'options'
        } else if (phase === 'options') {
          if (pending === undefined) {
            if (incoming.bytes < 16) return
            const head = incoming.take(16)
            pending = { option: head.readUInt32BE(8), length: head.readUInt32BE(12) }
          }
          const { option, length } = pending as { option: number, length: number }
          if (incoming.bytes < length) return
          if (length > 0) incoming.take(length)
          pending = undefined
          if (option === OPT_GO || option === OPT_INFO) {
            const info = Buffer.alloc(12)
            info.writeUInt16BE(INFO_EXPORT, 0)
            info.writeBigUInt64BE(BigInt(size), 2)
            info.writeUInt16BE(TFLAGS, 10)
            optionReply(socket, option, REP_INFO, info)
            optionReply(socket, option, REP_ACK)
            if (option === OPT_GO) phase = 'transmission'
          } else if (option === OPT_EXPORT_NAME) {
            const answer = Buffer.alloc(noZeroes ? 10 : 134)
            answer.writeBigUInt64BE(BigInt(size), 0)
            answer.writeUInt16BE(TFLAGS, 8)
            socket.write(answer)
            phase = 'transmission'
          } else if (option === OPT_ABORT) {
            optionReply(socket, option, REP_ACK)
            socket.end()
            return
          } else {
            optionReply(socket, option, REP_ERR_UNSUP)
          }
        } else {
          if (pending === undefined) {
            if (incoming.bytes < 28) return
            const head = incoming.take(28)
            pending = { type: head.readUInt16BE(6), handle: Buffer.from(head.subarray(8, 16)), offset: Number(head.readBigUInt64BE(16)), length: head.readUInt32BE(24) }
          }
          const request = pending as { type: number, handle: Buffer, offset: number, length: number }
          if (request.type === CMD_WRITE) {
            if (incoming.bytes < request.length) return
            const data = incoming.take(request.length)
            let done = 0
            while (done < data.byteLength) done += writeSync(fd, data, done, data.byteLength - done, request.offset + done)
            simpleReply(socket, request.handle, 0)
          } else if (request.type === CMD_READ) {
            const data = Buffer.allocUnsafe(request.length)
            let done = 0
            while (done < data.byteLength) {
              const n = readSync(fd, data, done, data.byteLength - done, request.offset + done)
              if (n === 0) { data.fill(0, done); break }
              done += n
            }
            simpleReply(socket, request.handle, 0, data)
          } else if (request.type === CMD_FLUSH) {
            fdatasyncSync(fd)
            simpleReply(socket, request.handle, 0)
          } else if (request.type === CMD_DISC) {
            socket.end()
            pending = undefined
            return
          } else {
            simpleReply(socket, request.handle, 95)
          }
          pending = undefined
        }
      }
    })
  }
  const server = createServer(serve)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const address = server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  return {
    port,
    close: async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      closeSync(fd)
    }
  }
}
