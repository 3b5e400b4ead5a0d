// Encryption benchmark (file backend), each figure a ratio against a baseline measured in the same
// run on the same instance:
//   1. 4 KiB random writeBlock throughput (WriteAcknowledged, 32 in flight): encrypted volume vs an
//      unencrypted one (target >= 0.6);
//   2. 1 MiB sequential write throughput (4 in flight): encrypted vs unencrypted (target >= 0.6);
//   3. 1 MiB sequential read throughput: encrypted vs unencrypted (target >= 0.6);
//   4. AES-256-GCM seal of one 4 KiB block: node:crypto vs @noble/ciphers; seals of 4 KiB blocks
//      256 to a call with the native addon (what multi-block requests use when it is built) vs
//      node:crypto block by block; and the 4 KiB encrypted-write rate against the seal rate of the
//      cipher in use (what share of the cipher's speed the I/O path keeps).
// Each pair runs in alternating short rounds, so both sides see the same machine conditions, after
// one unrecorded warm-up round each; the median round of each side is reported (BENCH_VERBOSE=1
// prints every round).
// The volumes use the default cipher: the native addon when it is built (GALLEONFS_NATIVE_AEAD=0
// turns it off, for comparison), else node:crypto, with large requests also on worker threads
// (GALLEONFS_CIPHER_THREADS=0 turns those off). Saved to bench/results/encryption.json.
//
// Env: BENCH_SECONDS (seconds per case and side, default 3, after a warm-up round), BENCH_DIR (parent of the temporary directory),
//      BENCH_VOLUME (volume size, default 512M).

import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GalleonFS, WriteConcern, parseSize } from '../src/index.js'
import { defaultCipher, nativeCipher, nobleCipher, nodeCipher, type AeadCipher } from '../src/crypto/cipher.js'
import { nativeAead, nativeAeadStatus, sealBatch } from '../src/crypto/native-aead.js'

const BLOCK = 4096
const MIB = 1 << 20
const VOLUME = parseSize(process.env.BENCH_VOLUME ?? '512M')
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3)
const RESULTS_FILE = fileURLToPath(new URL('./results/encryption.json', import.meta.url))

/** 4 KiB random writes per second, 32 in flight. */
async function randomWrites (g: GalleonFS, volume: string, seconds: number): Promise<number> {
  const data = new Uint8Array(randomBytes(BLOCK))
  const blocks = VOLUME / BLOCK
  let state = 0x9e3779b9
  const next = (): number => { state ^= state << 13; state ^= state >>> 17; state ^= state << 5; return (state >>> 0) % blocks }
  const started = performance.now()
  const stopAt = started + seconds * 1000
  let ops = 0
  await Promise.all(Array.from({ length: 32 }, async () => {
    while (performance.now() < stopAt) {
      await g.writeBlock(volume, next(), data, WriteConcern.WriteAcknowledged)
      ops++
    }
  }))
  await g.flush()
  return ops / ((performance.now() - started) / 1000)
}

/** 1 MiB sequential writes, bytes per second, 4 in flight, wrapping around the volume. */
const writeOffsets = new Map<string, number>()
async function sequentialWrites (g: GalleonFS, volume: string, seconds: number): Promise<number> {
  const data = new Uint8Array(randomBytes(MIB))
  let offset = writeOffsets.get(volume) ?? 0
  let bytes = 0
  const started = performance.now()
  const stopAt = started + seconds * 1000
  await Promise.all(Array.from({ length: 4 }, async () => {
    while (performance.now() < stopAt) {
      const at = offset
      offset = (offset + MIB) % VOLUME
      await g.write(volume, at, data)
      bytes += MIB
    }
  }))
  await g.flush()
  writeOffsets.set(volume, offset)
  return bytes / ((performance.now() - started) / 1000)
}

/** 1 MiB sequential reads over the written volume, bytes per second. */
const readOffsets = new Map<string, number>()
async function sequentialReads (g: GalleonFS, volume: string, seconds: number): Promise<number> {
  let offset = readOffsets.get(volume) ?? 0
  let bytes = 0
  const started = performance.now()
  const stopAt = started + seconds * 1000
  while (performance.now() < stopAt) {
    await g.read(volume, offset, MIB)
    offset = (offset + MIB) % VOLUME
    bytes += MIB
  }
  readOffsets.set(volume, offset)
  return bytes / ((performance.now() - started) / 1000)
}

/**
 * Runs two workloads in alternating short rounds (A B B A A B ...), SECONDS in total each, and
 * returns their median rates: on a shared, noisy machine both sides then see the same conditions,
 * and a round slowed down by something else running does not move the result.
 */
async function alternate (a: (seconds: number) => Promise<number>, b: (seconds: number) => Promise<number>): Promise<[number, number]> {
  const rounds = 10
  const slice = SECONDS / rounds
  const rates: [number[], number[]] = [[], []]
  // One unrecorded round each first: the first round after a switch of workload pays for it (cold
  // caches, the previous case's writes still being flushed by the kernel).
  await a(slice)
  await b(slice)
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? [0, 1] : [1, 0]
    for (const side of order) rates[side]?.push(await (side === 0 ? a : b)(slice))
  }
  if (process.env.BENCH_VERBOSE === '1') console.error('rounds', rates.map((side) => side.map((rate) => rate.toFixed(0)).join(' ')).join(' | '))
  const median = (values: number[]): number => {
    const sorted = [...values].sort((a, b) => a - b)
    const mid = sorted.length >> 1
    return sorted.length % 2 === 1 ? sorted[mid] as number : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2
  }
  return [median(rates[0]), median(rates[1])]
}

/** Seals of one 4 KiB block per second. */
function sealRate (cipher: AeadCipher): number {
  const key = new Uint8Array(randomBytes(32))
  const nonce = new Uint8Array(12)
  const data = new Uint8Array(randomBytes(BLOCK))
  const aad = new Uint8Array(28)
  let ops = 0
  const stopAt = performance.now() + Math.min(SECONDS, 1) * 1000
  const started = performance.now()
  while (performance.now() < stopAt) {
    for (let i = 0; i < 100; i++) cipher.seal(key, nonce, data, aad)
    ops += 100
  }
  return ops / ((performance.now() - started) / 1000)
}

/** 4 KiB blocks sealed per second by the native addon, 256 to a call. */
function nativeBatchRate (): number | undefined {
  const addon = nativeAead()
  if (addon === undefined) return undefined
  const key = new Uint8Array(randomBytes(32))
  const plain = new Uint8Array(randomBytes(256 * BLOCK))
  const out = new Uint8Array(256 * (BLOCK + 16))
  const jobs = Array.from({ length: 256 }, (_, i) => ({ nonce: new Uint8Array(12), aad: new Uint8Array(28), plain: plain.subarray(i * BLOCK, (i + 1) * BLOCK), out: out.subarray(i * (BLOCK + 16), (i + 1) * (BLOCK + 16)) }))
  let blocks = 0
  const started = performance.now()
  const stopAt = started + Math.min(SECONDS, 1) * 1000
  while (performance.now() < stopAt) {
    sealBatch(addon, key, jobs)
    blocks += 256
  }
  return blocks / ((performance.now() - started) / 1000)
}

async function fill (g: GalleonFS, volume: string): Promise<void> {
  const chunk = new Uint8Array(randomBytes(4 * MIB))
  for (let offset = 0; offset < VOLUME; offset += chunk.byteLength) await g.write(volume, offset, chunk)
  await g.flush()
}

async function main (): Promise<void> {
  const parent = process.env.BENCH_DIR ?? tmpdir()
  await mkdir(parent, { recursive: true })
  const dir = await mkdtemp(join(parent, 'galleon-encbench-'))
  const g = await GalleonFS.open({ storagePath: dir })
  try {
    await g.createVolume({ name: 'plain', sizeBytes: VOLUME })
    await g.createVolume({ name: 'secret', sizeBytes: VOLUME, storageClass: 'encrypted-storage', replicas: 1 })
    await fill(g, 'plain')
    await fill(g, 'secret')
    const [secretWrite, plainWrite] = await alternate(async (s) => await randomWrites(g, 'secret', s), async (s) => await randomWrites(g, 'plain', s))
    const [secretSeq, plainSeq] = await alternate(async (s) => await sequentialWrites(g, 'secret', s), async (s) => await sequentialWrites(g, 'plain', s))
    const [secretRead, plainRead] = await alternate(async (s) => await sequentialReads(g, 'secret', s), async (s) => await sequentialReads(g, 'plain', s))
    const node = sealRate(nodeCipher)
    const noble = sealRate(nobleCipher)
    const inUse = defaultCipher()
    const inUseRate = inUse === nodeCipher ? node : inUse === nobleCipher ? noble : sealRate(nativeCipher)
    const batch = nativeBatchRate()
    const mb = (bytesPerSecond: number): number => bytesPerSecond / MIB
    const rows = [
      { case: '4 KiB random writeBlock QD32: encrypted vs plain', value: secretWrite, baseline: plainWrite, unit: 'ops/s', ratio: secretWrite / plainWrite, target: '>= 0.6' },
      { case: '1 MiB sequential write: encrypted vs plain', value: mb(secretSeq), baseline: mb(plainSeq), unit: 'MiB/s', ratio: secretSeq / plainSeq, target: '>= 0.6' },
      { case: '1 MiB sequential read: encrypted vs plain', value: mb(secretRead), baseline: mb(plainRead), unit: 'MiB/s', ratio: secretRead / plainRead, target: '>= 0.6' },
      { case: 'AES-256-GCM seal of a 4 KiB block: node:crypto vs @noble/ciphers', value: node, baseline: noble, unit: 'ops/s', ratio: node / noble, target: null },
      ...(batch === undefined ? [] : [{ case: 'AES-256-GCM seal of 4 KiB blocks, 256 per call: native addon vs node:crypto block by block', value: batch, baseline: node, unit: 'blocks/s', ratio: batch / node, target: null }]),
      { case: `encrypted 4 KiB writes vs ${inUse.name} seals of one block alone`, value: secretWrite, baseline: inUseRate, unit: 'ops/s', ratio: secretWrite / inUseRate, target: null }
    ]
    console.log(`cipher in use: ${inUse.name}${inUse.name === 'native' ? '' : ` (native addon: ${nativeAeadStatus().reason})`}`)
    console.log('| case | value | baseline | ratio | target |')
    console.log('|---|---:|---:|---:|---|')
    for (const row of rows) console.log(`| ${row.case} | ${row.value.toFixed(0)} ${row.unit} | ${row.baseline.toFixed(0)} ${row.unit} | ${row.ratio.toFixed(2)}x | ${row.target ?? ''} |`)
    await mkdir(fileURLToPath(new URL('./results/', import.meta.url)), { recursive: true })
    await writeFile(RESULTS_FILE, JSON.stringify({ date: new Date().toISOString(), node: process.version, volumeBytes: VOLUME, seconds: SECONDS, cipher: inUse.name, cipherThreads: process.env.GALLEONFS_CIPHER_THREADS ?? 'default', rows }, null, 2) + '\n')
  } finally {
    await g.close()
    await rm(dir, { recursive: true, force: true })
  }
}

await main()
