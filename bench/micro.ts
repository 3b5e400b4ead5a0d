// Micro-benchmarks of the hot primitives (tinybench): the block checksum (CRC-32 from @node-rs/crc32,
// the one the engine uses, against node:zlib's and node:crypto sha256) on 4 KiB, the engine's block codec, and the in-memory I/O path end to end.
// Run with `node --import tsx bench/micro.ts` (part of `npm run bench`). BENCH_MICRO_MS sets the
// time per task (default 500).

import { createHash, randomFillSync } from 'node:crypto'
import { crc32 as zlibCrc32 } from 'node:zlib'
import { crc32, crc32Implementation } from '../src/checksum.js'
import { Bench } from 'tinybench'
import { decodeBlock, encodeBlock } from '../src/engine/codec.js'
import { GalleonFS, WriteConcern } from '../src/index.js'
import { nobleCipher, nodeCipher } from '../src/crypto/cipher.js'

const BLOCK = 4096
const TIME_MS = Number(process.env.BENCH_MICRO_MS ?? 500)

const data = randomFillSync(new Uint8Array(BLOCK))
const address = { volume: 1, index: 12345, gen: 678 }
const encoded = encodeBlock(address, data)
const check = decodeBlock(address, encoded)
if (!check.ok) throw new Error(`codec round trip failed: ${check.reason}`)

const g = await GalleonFS.open({ inMemory: true })
const volume = await g.createVolume({ name: 'micro', sizeBytes: 64 * 1024 * 1024 })
const blocks = volume.sizeBytes / BLOCK
for (let index = 0; index < blocks; index += 256) await g.write(volume.id, index * BLOCK, randomFillSync(new Uint8Array(256 * BLOCK)))
let writeIndex = 0
let readIndex = 0

// Bytes each task moves per operation, for the MB/s column.
const bytesPerOp: Record<string, number> = {}
const bench = new Bench({ time: TIME_MS, warmupTime: 100 })
function add (name: string, bytes: number, fn: () => unknown): void {
  bytesPerOp[name] = bytes
  bench.add(name, fn)
}

let sink = 0
const CRC_ENGINE = `crc32 4 KiB (engine: ${crc32Implementation})`
add(CRC_ENGINE, BLOCK, () => { sink ^= crc32(data) })
add('crc32 4 KiB (node:zlib)', BLOCK, () => { sink ^= zlibCrc32(data) })
add('sha256 4 KiB (node:crypto)', BLOCK, () => { sink ^= createHash('sha256').update(data).digest()[0] as number })
const aesKey = randomFillSync(new Uint8Array(32))
const aesNonce = randomFillSync(new Uint8Array(12))
const aesAad = new Uint8Array(24)
const big = randomFillSync(new Uint8Array(1 << 20))
add('AES-256-GCM seal 4 KiB (node:crypto)', BLOCK, () => { sink ^= nodeCipher.seal(aesKey, aesNonce, data, aesAad).byteLength })
add('AES-256-GCM seal 4 KiB (@noble/ciphers)', BLOCK, () => { sink ^= nobleCipher.seal(aesKey, aesNonce, data, aesAad).byteLength })
add('AES-256-GCM seal 1 MiB (node:crypto)', 1 << 20, () => { sink ^= nodeCipher.seal(aesKey, aesNonce, big, aesAad).byteLength })
add('codec encodeBlock 4 KiB', BLOCK, () => { sink ^= encodeBlock(address, data).byteLength })
add('codec decodeBlock 4 KiB (verify)', BLOCK, () => { const r = decodeBlock(address, encoded); if (!r.ok) throw new Error(r.reason) })
add('memory writeBlock 4 KiB (WriteAcknowledged)', BLOCK, async () => {
  await g.writeBlock(volume.id, writeIndex, data, WriteConcern.WriteAcknowledged)
  writeIndex = (writeIndex + 7919) % blocks
})
add('memory readBlock 4 KiB (cached)', BLOCK, async () => {
  sink ^= (await g.readBlock(volume.id, readIndex & 1023)).byteLength
  readIndex++
})
add('memory readBlock 4 KiB (mostly uncached)', BLOCK, async () => {
  sink ^= (await g.readBlock(volume.id, readIndex % blocks)).byteLength
  readIndex = (readIndex + 7919) % blocks
})

await bench.run()
await g.close()

const rows: Array<{ name: string, opsPerSec: number, mbPerSec: number, meanUs: number, p99Us: number }> = []
for (const task of bench.tasks) {
  const result = task.result
  if (result.state !== 'completed') throw new Error(`task ${task.name} did not complete: ${result.state}${'error' in result ? ` ${String(result.error)}` : ''}`)
  const opsPerSec = result.throughput.mean
  rows.push({
    name: task.name,
    opsPerSec,
    mbPerSec: opsPerSec * (bytesPerOp[task.name] ?? 0) / 1e6,
    meanUs: result.latency.mean * 1000,
    p99Us: result.latency.p99 * 1000
  })
}
const opsOf = (name: string): number => rows.find((row) => row.name === name)?.opsPerSec ?? NaN

console.log(`\n## Micro-benchmarks (tinybench, ${TIME_MS} ms per task, Node ${process.version})\n`)
console.log('| task | ops/s | MB/s | mean µs | p99 µs |')
console.log('|---|---:|---:|---:|---:|')
for (const row of rows) {
  console.log(`| ${row.name} | ${fmt(row.opsPerSec, 0)} | ${fmt(row.mbPerSec, 0)} | ${fmt(row.meanUs, 2)} | ${fmt(row.p99Us, 2)} |`)
}
console.log('')
console.log(`engine crc32 vs node:zlib crc32 (same 4 KiB): ${fmt(opsOf(CRC_ENGINE) / opsOf('crc32 4 KiB (node:zlib)'), 1)}x`)
console.log(`engine crc32 vs sha256 (same 4 KiB): ${fmt(opsOf(CRC_ENGINE) / opsOf('sha256 4 KiB (node:crypto)'), 1)}x`)
console.log(`AES-256-GCM 4 KiB, node:crypto vs @noble/ciphers: ${fmt(opsOf('AES-256-GCM seal 4 KiB (node:crypto)') / opsOf('AES-256-GCM seal 4 KiB (@noble/ciphers)'), 1)}x`)
console.log(`decodeBlock (crc verify + header) vs bare crc32: ${fmt(opsOf('codec decodeBlock 4 KiB (verify)') / opsOf(CRC_ENGINE), 2)}x`)
if (sink === 0.5) console.log('') // keep `sink` observable so the work is not optimised away

function fmt (value: number, digits: number): string {
  if (!Number.isFinite(value)) return 'n/a'
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}
