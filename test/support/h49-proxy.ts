// A TCP proxy between a node and etcd (node:net) for the h49 tests: it ends, resets or stalls the
// connections going through it, and can end a lease keepalive stream gracefully (an OK status and
// no answer) without touching the rest of the connection.

import { connect, createServer, type AddressInfo, type Socket } from 'node:net'

const DATA = 0x0
const HEADERS = 0x1
const RST_STREAM = 0x3
const END_STREAM = 0x1
const END_HEADERS = 0x4
const PREFACE_LENGTH = 24
const CANCEL = 0x8

/**
 * A gRPC "trailers-only" answer with status OK: `:status: 200` (static index 8),
 * `content-type: application/grpc` and `grpc-status: 0` as literals without indexing, so the
 * client's HPACK table is left as it was (the frame is made up here, not etcd's).
 */
function okTrailersOnly (streamId: number): Buffer {
  const contentType = Buffer.from('application/grpc')
  const block = Buffer.concat([
    Buffer.from([0x88]),
    Buffer.from([0x0f, 31 - 15, contentType.length]), contentType,
    Buffer.from([0x00, 11]), Buffer.from('grpc-status'), Buffer.from([1]), Buffer.from('0')
  ])
  const header = Buffer.alloc(9)
  header.writeUIntBE(block.length, 0, 3)
  header[3] = HEADERS
  header[4] = END_STREAM | END_HEADERS
  header.writeUInt32BE(streamId, 5)
  return Buffer.concat([header, block])
}

function rstStream (streamId: number, code: number): Buffer {
  const frame = Buffer.alloc(13)
  frame.writeUIntBE(4, 0, 3)
  frame[3] = RST_STREAM
  frame.writeUInt32BE(streamId, 5)
  frame.writeUInt32BE(code, 9)
  return frame
}

/** Whether a DATA frame's payload is one gRPC LeaseKeepAliveRequest: `{ ID }` alone (field 1, a varint), the stream left open. */
function isKeepaliveRequest (payload: Buffer, flags: number): boolean {
  if ((flags & END_STREAM) !== 0 || payload.length < 7 || payload[0] !== 0) return false
  const length = payload.readUInt32BE(1)
  if (length !== payload.length - 5 || payload[5] !== 0x08) return false
  // The varint runs to the end of the message: nothing follows the ID.
  for (let i = 6; i < payload.length; i++) if ((payload[i]! & 0x80) === 0) return i === payload.length - 1
  return false
}

interface Link {
  readonly client: Socket
  readonly upstream: Socket
  stalled: Buffer[] | undefined
  upstreamStalled: Buffer[] | undefined
  /** Open watch streams (a DATA frame starting with a WatchRequest create_request, the stream left open). */
  readonly watchStreams: Set<number>
  /** Ends a stream here: etcd is told to cancel it, the client gets an OK status, and nothing more is relayed on it. */
  endStream: (streamId: number) => void
}

/** The proxy's controls. */
export interface EtcdProxy {
  /** `http://127.0.0.1:<port>`: the endpoint to give the node. */
  readonly endpoint: string
  /** Connections opened through the proxy so far. */
  connections: () => number
  /** Lease ids (decimal) of the keepalive streams ended so far by `endKeepalives`, in order. */
  keepalivesEnded: () => string[]
  /** Keepalive requests relayed to etcd so far (for lease `id` when given). */
  keepalivesRelayed: (id?: string) => number
  /** Ends the next `count` keepalive streams gracefully (OK status, no answer) instead of relaying them. */
  endKeepalives: (count: number) => void
  /** Ends every open watch stream gracefully (OK status, no error), the connection left open. */
  endWatchStreams: () => void
  /** Watch streams ended so far by `endWatchStreams`. */
  watchStreamsEnded: () => number
  /** Watch streams opened through the proxy so far. */
  watchStreamsOpened: () => number
  /** Ends every open connection with a FIN both ways (socket.end). */
  endConnections: () => void
  /** Resets every open connection (socket.resetAndDestroy: a TCP RST both ways). */
  resetConnections: () => void
  /** Stops relaying bytes (either way) on the open and new connections; they stay open. */
  stall: () => void
  /** Relays again, the bytes held meanwhile first. */
  resume: () => void
  /** Refuses new connections (closing them at once) until `accept()`. */
  refuse: () => void
  accept: () => void
  close: () => Promise<void>
}

/** Starts a proxy on a free loopback port to etcd at `target` (a client URL). */
export async function etcdProxy (target: string): Promise<EtcdProxy> {
  const { hostname, port } = new URL(target)
  const links = new Set<Link>()
  let connections = 0
  let toEnd = 0
  const ended: string[] = []
  let watchEnded = 0
  let watchOpened = 0
  const relayed = new Map<string, number>()
  let stalled = false
  let refusing = false
  const server = createServer((client) => {
    connections++
    if (refusing) { client.resetAndDestroy(); return }
    const upstream = connect(Number(port), hostname)
    const link: Link = { client, upstream, stalled: stalled ? [] : undefined, upstreamStalled: stalled ? [] : undefined, watchStreams: new Set(), endStream: (streamId) => { cut.add(streamId); toEtcd(rstStream(streamId, CANCEL)); toClient(okTrailersOnly(streamId)) } }
    links.add(link)
    let pending = Buffer.alloc(0)
    let prefaceLeft = PREFACE_LENGTH
    /** Streams ended here: whatever else the client sends on them is not relayed. */
    const cut = new Set<number>()
    const toEtcd = (bytes: Buffer): void => { if (link.stalled !== undefined) link.stalled.push(bytes); else upstream.write(bytes) }
    const toClient = (bytes: Buffer): void => { if (link.upstreamStalled !== undefined) link.upstreamStalled.push(bytes); else client.write(bytes) }
    client.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk])
      if (prefaceLeft > 0) {
        if (pending.length < prefaceLeft) return
        toEtcd(pending.subarray(0, prefaceLeft))
        pending = pending.subarray(prefaceLeft)
        prefaceLeft = 0
      }
      while (pending.length >= 9 && pending.length >= 9 + pending.readUIntBE(0, 3)) {
        const size = 9 + pending.readUIntBE(0, 3)
        const frame = pending.subarray(0, size)
        pending = pending.subarray(size)
        const type = frame[3]!
        const flags = frame[4]!
        const streamId = frame.readUInt32BE(5) & 0x7fffffff
        // DATA and RST_STREAM frames leave HPACK state alone: dropping them keeps both ends in step.
        if (cut.has(streamId) && (type === DATA || type === RST_STREAM)) continue
        if (type === DATA && (flags & END_STREAM) === 0 && frame.length > 14 && frame[9] === 0 && frame[14] === 0x0a && !link.watchStreams.has(streamId)) {
          link.watchStreams.add(streamId)
          watchOpened++
        }
        if (type === DATA && isKeepaliveRequest(frame.subarray(9), flags)) {
          const id = readVarint(frame.subarray(15))
          if (toEnd > 0) {
            toEnd--
            ended.push(id)
            link.endStream(streamId) // etcd forgets the stream (its headers were relayed)
            continue
          }
          relayed.set(id, (relayed.get(id) ?? 0) + 1)
        }
        toEtcd(Buffer.from(frame))
      }
    })
    // etcd's frames are relayed whole, so that those of a stream ended here can be left out.
    let fromEtcd = Buffer.alloc(0)
    upstream.on('data', (chunk: Buffer) => {
      fromEtcd = Buffer.concat([fromEtcd, chunk])
      while (fromEtcd.length >= 9 && fromEtcd.length >= 9 + fromEtcd.readUIntBE(0, 3)) {
        const size = 9 + fromEtcd.readUIntBE(0, 3)
        const frame = fromEtcd.subarray(0, size)
        fromEtcd = fromEtcd.subarray(size)
        const streamId = frame.readUInt32BE(5) & 0x7fffffff
        if (cut.has(streamId) && (frame[3] === DATA || frame[3] === RST_STREAM)) continue
        toClient(Buffer.from(frame))
      }
    })
    for (const socket of [client, upstream]) socket.on('error', () => {})
    client.on('end', () => { upstream.end() })
    upstream.on('end', () => { client.end() })
    client.on('close', () => { upstream.destroy(); links.delete(link) })
    upstream.on('close', () => { client.destroy(); links.delete(link) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    connections: () => connections,
    keepalivesEnded: () => [...ended],
    keepalivesRelayed: (id) => (id === undefined ? [...relayed.values()].reduce((a, b) => a + b, 0) : relayed.get(id) ?? 0),
    endKeepalives: (count) => { toEnd = count },
    endWatchStreams: () => {
      for (const link of links) {
        for (const streamId of link.watchStreams) { link.endStream(streamId); watchEnded++ }
        link.watchStreams.clear()
      }
    },
    watchStreamsEnded: () => watchEnded,
    watchStreamsOpened: () => watchOpened,
    endConnections: () => { for (const link of links) { link.client.end(); link.upstream.end() } },
    resetConnections: () => { for (const link of links) { link.client.resetAndDestroy(); link.upstream.resetAndDestroy() } },
    stall: () => {
      stalled = true
      for (const link of links) { link.stalled ??= []; link.upstreamStalled ??= [] }
    },
    resume: () => {
      stalled = false
      for (const link of links) {
        const [up, down] = [link.stalled ?? [], link.upstreamStalled ?? []]
        link.stalled = undefined
        link.upstreamStalled = undefined
        for (const bytes of up) link.upstream.write(bytes)
        for (const bytes of down) link.client.write(bytes)
      }
    },
    refuse: () => { refusing = true },
    accept: () => { refusing = false },
    close: async () => {
      for (const link of links) { link.client.destroy(); link.upstream.destroy() }
      await new Promise((resolve) => server.close(resolve))
    }
  }
}

/** A protobuf varint (up to 64 bits) as a decimal string. */
function readVarint (bytes: Buffer): string {
  let value = 0n
  let shift = 0n
  for (const byte of bytes) {
    value |= BigInt(byte & 0x7f) << shift
    if ((byte & 0x80) === 0) break
    shift += 7n
  }
  return value.toString()
}
