// A TCP relay to etcd that reads the HTTP/2 frames going through it, for tests of what the etcd
// coordinator does when requests are held, applied late, or lose their answers (see frameRelay).

import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { until } from './wait.js'

/** One HTTP/2 frame (type -1: the client's connection preface), as the raw bytes on the wire. */
interface Frame { readonly type: number, readonly flags: number, readonly streamId: number, readonly bytes: Buffer }

const DATA = 0x0
const HEADERS = 0x1
const RST_STREAM = 0x3
const GOAWAY = 0x7
const END_STREAM = 0x1
const PREFACE_LENGTH = 24 // 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'

/** Cuts a byte stream into whole HTTP/2 frames; the client's side starts with the connection preface. */
function frameReader (preface: boolean): (chunk: Buffer) => Frame[] {
  let pending = Buffer.alloc(0)
  let prefaceLeft = preface ? PREFACE_LENGTH : 0
  return (chunk) => {
    pending = Buffer.concat([pending, chunk])
    const frames: Frame[] = []
    if (prefaceLeft > 0) {
      if (pending.length < prefaceLeft) return frames
      frames.push({ type: -1, flags: 0, streamId: 0, bytes: pending.subarray(0, prefaceLeft) })
      pending = pending.subarray(prefaceLeft)
      prefaceLeft = 0
    }
    while (pending.length >= 9 && pending.length >= 9 + pending.readUIntBE(0, 3)) {
      const size = 9 + pending.readUIntBE(0, 3)
      frames.push({ type: pending[3]!, flags: pending[4]!, streamId: pending.readUInt32BE(5) & 0x7fffffff, bytes: pending.subarray(0, size) })
      pending = pending.subarray(size)
    }
    return frames
  }
}

interface Link {
  readonly client: Socket
  readonly upstream: Socket
  /** Frames from the client kept back from etcd (undefined: they are relayed). */
  held: Buffer[] | undefined
  /** Streams whose whole request is in `held`, and streams etcd has finished answering. */
  readonly requests: Set<number>
  readonly answered: Set<number>
  /** Closes the connection right after relaying etcd's first DATA frame on it. */
  cutAfterFirstData: boolean
}

/** Closes a connection as it relays the next answer (the answer lost) or the next request (never sent on). */
type Loss = { readonly what: 'answer' | 'request', readonly thenHold: boolean } | undefined

/**
 * A TCP relay to etcd at `target` that reads the HTTP/2 frames going through it:
 * - `hold()` keeps back what clients send on every connection, open or new (etcd sees nothing, as
 *   behind a link that stalls); cancellations (RST_STREAM, GOAWAY) are dropped, as when they are
 *   lost. `detach()` then closes the clients' side of these connections, so the clients connect
 *   again (relayed normally), while the requests wait on etcd's side; `flush()` hands them to etcd
 *   at last and resolves once etcd has answered every one of them: requests applied late.
 * - `cutNextAfterFirstData()` closes the next new connection right after etcd's first DATA frame on
 *   it (`cuts()` counts the connections closed so).
 * - `loseNext('answer')` closes the connection that carries etcd's next answer (DATA frame) instead
 *   of relaying it: etcd applied the request, the client never learns it did. `loseNext('request')`
 *   closes the connection that carries the client's next request (HEADERS frame) instead: etcd never
 *   sees it. `losses()` counts the connections closed so. With `thenHold`, `hold()` follows at once.
 * - `drop()` closes every open connection.
 */
export async function frameRelay (target: string): Promise<{ endpoint: string, hold: () => void, detach: () => void, flush: () => Promise<void>, cutNextAfterFirstData: () => void, cuts: () => number, loseNext: (what: 'answer' | 'request', options?: { thenHold?: boolean }) => void, losses: () => number, drop: () => void, close: () => Promise<void> }> {
  const { hostname, port } = new URL(target)
  const links = new Set<Link>()
  let holding = false
  let cutNext = false
  let cuts = 0
  let loss: Loss
  let losses = 0
  const lose = (link: Link): void => {
    if (loss?.thenHold === true) holding = true
    loss = undefined
    losses++
    link.client.destroy()
    link.upstream.destroy()
  }
  const server = createServer((client) => {
    const upstream = connect(Number(port), hostname)
    const link: Link = { client, upstream, held: holding ? [] : undefined, requests: new Set(), answered: new Set(), cutAfterFirstData: cutNext }
    cutNext = false
    links.add(link)
    const fromClient = frameReader(true)
    const fromEtcd = frameReader(false)
    client.on('data', (chunk: Buffer) => {
      for (const frame of fromClient(chunk)) {
        if (loss?.what === 'request' && frame.type === HEADERS) { lose(link); return }
        if (link.held === undefined) { upstream.write(frame.bytes); continue }
        if (frame.type === RST_STREAM || frame.type === GOAWAY) continue
        link.held.push(frame.bytes)
        if ((frame.type === DATA || frame.type === HEADERS) && (frame.flags & END_STREAM) !== 0) link.requests.add(frame.streamId)
      }
    })
    upstream.on('data', (chunk: Buffer) => {
      for (const frame of fromEtcd(chunk)) {
        if (((frame.type === DATA || frame.type === HEADERS) && (frame.flags & END_STREAM) !== 0) || frame.type === RST_STREAM) link.answered.add(frame.streamId)
        if (client.destroyed) continue
        if (loss?.what === 'answer' && frame.type === DATA) { lose(link); return }
        if (link.cutAfterFirstData && frame.type === DATA) {
          link.cutAfterFirstData = false
          cuts++
          client.end(frame.bytes)
          upstream.destroy()
          continue
        }
        client.write(frame.bytes)
      }
    })
    const end = (): void => { client.destroy(); upstream.destroy(); links.delete(link) }
    upstream.on('error', end).on('close', end)
    // The client's side going away ends the link, unless requests are kept back for etcd.
    client.on('error', () => {}).on('close', () => { if (link.held === undefined) end() })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const held = (): Link[] => [...links].filter((link) => link.held !== undefined)
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hold: () => {
      holding = true
      for (const link of links) link.held ??= []
    },
    detach: () => {
      holding = false
      for (const link of held()) link.client.destroy()
    },
    flush: async () => {
      holding = false
      const flushed = held()
      for (const link of flushed) {
        for (const bytes of link.held!) link.upstream.write(bytes)
        link.held = undefined
      }
      await until('etcd answered the requests kept back', () => flushed.every((link) => [...link.requests].every((stream) => link.answered.has(stream))), 20_000)
    },
    cutNextAfterFirstData: () => { cutNext = true },
    cuts: () => cuts,
    loseNext: (what, options) => { loss = { what, thenHold: options?.thenHold === true } },
    losses: () => losses,
    drop: () => { for (const link of links) { link.client.destroy(); link.upstream.destroy() } },
    close: async () => {
      for (const link of links) { link.client.destroy(); link.upstream.destroy() }
      await new Promise((resolve) => server.close(resolve))
    }
  }
}
