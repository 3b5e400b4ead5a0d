// A TCP relay to etcd for the h65 tests: it can run an async step (such as stepping a child's wall
// clock) after a lease keepalive request has left the client and before etcd sees it, so the step
// falls inside the keepalive's round trip; and it can stall every connection (a partition).

import { connect, createServer, type AddressInfo, type Socket } from 'node:net'

const DATA = 0x0
const END_STREAM = 0x1
const PREFACE_LENGTH = 24

/** Whether a DATA frame's payload is one gRPC LeaseKeepAliveRequest: `{ ID }` alone (field 1, a varint). */
function keepaliveLease (payload: Buffer, flags: number): string | undefined {
  if ((flags & END_STREAM) !== 0 || payload.length < 7 || payload[0] !== 0) return undefined
  if (payload.readUInt32BE(1) !== payload.length - 5 || payload[5] !== 0x08) return undefined
  let value = 0n
  let shift = 0n
  for (let i = 6; i < payload.length; i++) {
    value |= BigInt(payload[i]! & 0x7f) << shift
    shift += 7n
    if ((payload[i]! & 0x80) === 0) return i === payload.length - 1 ? value.toString() : undefined
  }
  return undefined
}

export interface KeepaliveProxy {
  readonly endpoint: string
  /**
   * Runs `step` once while keepalives of `leases` distinct leases are all in flight (sent, not yet
   * relayed to etcd): from a keepalive on, what clients send is held for up to `windowMs` (less than
   * a keepalive's own deadline) for those of the other leases; when they do not all come, it is
   * relayed and the next keepalive starts another try. Resolves after the step, the held bytes relayed.
   */
  stepInsideKeepalives: (leases: number, windowMs: number, step: () => Promise<void>) => Promise<void>
  /** Stops relaying, both ways, on every connection, open or new (a partition). */
  stall: () => void
  close: () => Promise<void>
}

export async function keepaliveProxy (target: string): Promise<KeepaliveProxy> {
  const { hostname, port } = new URL(target)
  const sockets = new Set<Socket>()
  let stalled = false
  let hook: { leases: number, windowMs: number, step: () => Promise<void>, done: () => void } | undefined
  /** The try under way: the leases seen, and the gate every relayed frame waits for meanwhile. */
  let attempt: { seen: Set<string>, open: () => void, gate: Promise<void>, timer: NodeJS.Timeout } | undefined
  const release = (): void => { if (attempt !== undefined) { clearTimeout(attempt.timer); attempt.open(); attempt = undefined } }
  const sawKeepalive = (lease: string): void => {
    if (hook === undefined) return
    if (attempt === undefined) {
      let open = (): void => {}
      const gate = new Promise<void>((resolve) => { open = resolve })
      attempt = { seen: new Set(), open, gate, timer: setTimeout(release, hook.windowMs) }
    }
    attempt.seen.add(lease)
    if (attempt.seen.size < hook.leases) return
    const current = attempt
    const { step, done } = hook
    hook = undefined
    clearTimeout(current.timer)
    void step().then(() => { if (attempt === current) attempt = undefined; current.open(); done() })
  }
  const server = createServer((client) => {
    const upstream = connect(Number(port), hostname)
    sockets.add(client).add(upstream)
    let pending = Buffer.alloc(0)
    let prefaceLeft = PREFACE_LENGTH
    // Frames wait here while a step runs, so that their order is kept.
    let queue: Promise<void> = Promise.resolve()
    const relay = (bytes: Buffer): void => {
      const gate = attempt?.gate
      queue = queue.then(async () => { await gate; if (!stalled) upstream.write(bytes) })
    }
    client.on('data', (chunk: Buffer) => {
      if (stalled) return
      pending = Buffer.concat([pending, chunk])
      if (prefaceLeft > 0) {
        if (pending.length < prefaceLeft) return
        relay(pending.subarray(0, prefaceLeft))
        pending = pending.subarray(prefaceLeft)
        prefaceLeft = 0
      }
      while (pending.length >= 9 && pending.length >= 9 + pending.readUIntBE(0, 3)) {
        const size = 9 + pending.readUIntBE(0, 3)
        const frame = Buffer.from(pending.subarray(0, size))
        pending = pending.subarray(size)
        const lease = frame[3] === DATA ? keepaliveLease(frame.subarray(9), frame[4]!) : undefined
        if (lease !== undefined) sawKeepalive(lease)
        relay(frame)
      }
    })
    upstream.on('data', (chunk: Buffer) => { if (!stalled) client.write(chunk) })
    for (const socket of [client, upstream]) {
      socket.on('error', () => {})
      socket.on('close', () => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream) })
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stepInsideKeepalives: async (leases, windowMs, step) => await new Promise<void>((resolve) => { hook = { leases, windowMs, step, done: resolve } }),
    stall: () => { stalled = true },
    close: async () => {
      release()
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => server.close(resolve))
    }
  }
}
