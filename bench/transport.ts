// End-to-end benchmark of the tcp transport on loopback against a raw node:net baseline measured in
// the same run: 4 KiB request/reply at 1 and 32 in flight (baseline: a plain echo server), and 1 MiB
// one-way throughput at 4 in flight (baseline: a server acknowledging each MiB with one byte).
// Run with `node --import tsx bench/transport.ts`; BENCH_TRANSPORT_MS sets the time per case
// (default 2000). Saved to bench/results/transport.json.

import { mkdir, writeFile } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { fileURLToPath } from 'node:url'
import { TcpTransport } from '../backends/tcp/index.js'

const TIME_MS = Number(process.env.BENCH_TRANSPORT_MS ?? 2000)
const SMALL = 4096
const LARGE = 1024 * 1024
const RESULTS_FILE = fileURLToPath(new URL('./results/transport.json', import.meta.url))

/** Runs `operation` with `depth` in flight for TIME_MS (after a short warm-up); resolves to ops/s. */
async function closedLoop (depth: number, operation: () => Promise<void>): Promise<number> {
  const run = async (ms: number): Promise<number> => {
    const deadline = performance.now() + ms
    let done = 0
    await Promise.all(Array.from({ length: depth }, async () => {
      while (performance.now() < deadline) {
        await operation()
        done++
      }
    }))
    return done
  }
  await run(Math.min(300, TIME_MS / 4))
  const start = performance.now()
  const done = await run(TIME_MS)
  return done / ((performance.now() - start) / 1000)
}

/**
 * A raw socket client for the baselines: `send(bytes)` resolves when the server has sent back
 * `replyBytes` bytes for it (replies are in order, so a FIFO of waiters matches them).
 */
function rawClient (socket: Socket, replyBytes: number): (bytes: Uint8Array) => Promise<void> {
  const waiters: Array<() => void> = []
  let received = 0
  socket.on('data', (chunk: Buffer) => {
    received += chunk.byteLength
    while (received >= replyBytes && waiters.length > 0) {
      received -= replyBytes
      ;(waiters.shift() as () => void)()
    }
  })
  return async (bytes) => {
    await new Promise<void>((resolve) => {
      waiters.push(resolve)
      socket.write(bytes)
    })
  }
}

async function listen (server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return (server.address() as AddressInfo).port
}

async function dial (port: number): Promise<Socket> {
  const socket = connect({ host: '127.0.0.1', port, noDelay: true })
  await new Promise<void>((resolve, reject) => { socket.once('connect', resolve).once('error', reject) })
  return socket
}

const small = new Uint8Array(SMALL).fill(7)
const large = new Uint8Array(LARGE).fill(9)

// Baselines: an echo server, and a server that answers each LARGE bytes with one byte.
const echoServer = createServer({ noDelay: true }, (socket) => { socket.on('data', (chunk) => socket.write(chunk)) })
const ackServer = createServer({ noDelay: true }, (socket) => {
  let pending = 0
  socket.on('data', (chunk) => {
    pending += chunk.byteLength
    while (pending >= LARGE) {
      pending -= LARGE
      socket.write(Buffer.from([1]))
    }
  })
})
const echoPort = await listen(echoServer)
const ackPort = await listen(ackServer)

const server = new TcpTransport({ nodeId: 'bench-server', clusterSecret: 'bench-transport-secret' })
const address = await server.listen(async (_from, request) => request.kind === 'echo'
  ? { kind: 'echo', header: {}, payload: request.payload }
  : { kind: 'ack', header: {} })
const client = new TcpTransport({ nodeId: 'bench-client', clusterSecret: 'bench-transport-secret' })
await client.request(address, { kind: 'ack', header: {} }) // connect and authenticate outside the timing

interface Row { case: string, value: number, baseline: number, unit: string, ratio: number }
const rows: Row[] = []
function record (name: string, value: number, baseline: number, unit: string): void {
  rows.push({ case: name, value, baseline, unit, ratio: value / baseline })
}

for (const depth of [1, 32]) {
  const socket = await dial(echoPort)
  const send = rawClient(socket, SMALL)
  const baseline = await closedLoop(depth, async () => { await send(small) })
  socket.destroy()
  const value = await closedLoop(depth, async () => { await client.request(address, { kind: 'echo', header: { n: 1 }, payload: small }) })
  record(`4 KiB request/reply, ${depth} in flight: tcp transport vs raw net echo`, value, baseline, 'ops/s')
}

{
  const depth = 4
  const socket = await dial(ackPort)
  const send = rawClient(socket, 1)
  const baseline = await closedLoop(depth, async () => { await send(large) })
  socket.destroy()
  const value = await closedLoop(depth, async () => { await client.request(address, { kind: 'ack', header: {}, payload: large }) })
  record(`1 MiB one-way, ${depth} in flight: tcp transport vs raw net`, value, baseline, 'MiB/s')
}

await client.close()
await server.close()
echoServer.close()
ackServer.close()

console.log(`tcp transport on loopback, ${TIME_MS} ms per case (Node ${process.version})`)
for (const row of rows) {
  console.log(`${row.case.padEnd(66)} ${row.value.toFixed(0).padStart(8)} vs ${row.baseline.toFixed(0).padStart(8)} ${row.unit.padEnd(6)} ratio ${row.ratio.toFixed(2)}`)
}
await mkdir(fileURLToPath(new URL('./results/', import.meta.url)), { recursive: true })
await writeFile(RESULTS_FILE, JSON.stringify({ date: new Date().toISOString(), node: process.version, seconds: TIME_MS / 1000, rows }, null, 2) + '\n')
