// The `npm start` program: opens GalleonFS on the embedded default (classic-level metadata and the
// file block store under one directory), writes and verifies blocks and a byte range, prints usage
// and metrics, and closes. Safe to run again and again on the same directory: each run checks the
// data the previous run left behind before writing its own.
//
// Usage: node --import tsx examples/quickstart.ts [storagePath]
//        (or GALLEONFS_STORAGE_PATH=...; default ./galleonfs-data)

import { GalleonFS, WriteConcern, formatSize, isGalleonError, type Volume } from '../src/index.js'

const storagePath = process.argv[2] ?? process.env.GALLEONFS_STORAGE_PATH ?? './galleonfs-data'
const VOLUME_NAME = 'quickstart'
const VOLUME_SIZE = '64M'
/** Blocks 1..DATA_BLOCKS hold the run's data; block 0 holds the run header, written last. */
const DATA_BLOCKS = 8
/** Where the unaligned byte range goes: across the boundary of blocks 20 and 21. */
const RANGE_OFFSET = 21 * 4096 - 1000
const RANGE_LENGTH = 3000
const HEADER_MAGIC = 'GALLEONFS-QUICKSTART\n'

/** Deterministic bytes for (run, stream): what a run writes, and what the next run expects to find. */
function pattern (run: number, stream: number, length: number): Uint8Array {
  const out = new Uint8Array(length)
  let x = (run * 2654435761 + stream * 40503 + 1) >>> 0
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    out[i] = x >>> 24
  }
  return out
}

function sameBytes (a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength))
}

/** The run number recorded in block 0, or 0 when the volume holds no finished run. */
function previousRun (header: Uint8Array): number {
  const text = Buffer.from(header.buffer, header.byteOffset, header.byteLength).toString('utf8', 0, 64)
  if (!text.startsWith(HEADER_MAGIC)) return 0
  const run = Number.parseInt(text.slice(HEADER_MAGIC.length), 10)
  return Number.isSafeInteger(run) && run > 0 ? run : 0
}

function check (ok: boolean, what: string): void {
  if (!ok) throw new Error(`verification failed: ${what}`)
  console.log(`  ok  ${what}`)
}

async function openVolume (g: GalleonFS): Promise<Volume> {
  try {
    const volume = await g.getVolume(VOLUME_NAME)
    console.log(`reusing volume '${volume.name}' (${volume.id}), ${formatSize(volume.sizeBytes)}`)
    return volume
  } catch (err) {
    if (!isGalleonError(err, 'VOLUME_NOT_FOUND')) throw err
  }
  const volume = await g.createVolume({ name: VOLUME_NAME, sizeBytes: VOLUME_SIZE, labels: { app: 'quickstart' } })
  console.log(`created volume '${volume.name}' (${volume.id}), ${formatSize(volume.sizeBytes)}, class ${volume.storageClass}`)
  return volume
}

async function main (): Promise<void> {
  console.log(`GalleonFS quickstart on ${storagePath}`)
  const g = await GalleonFS.open({ storagePath })
  try {
    console.log(`opened: backend ${g.backend}, block size ${g.blockSize} bytes`)
    const volume = await openVolume(g)
    const blockSize = volume.blockSize

    // 1. What the previous run left behind must still be there, byte for byte.
    const before = previousRun(await g.readBlock(volume, 0))
    if (before === 0) {
      console.log('no previous run found on this volume')
    } else {
      console.log(`checking the data of previous run #${before}:`)
      for (let index = 1; index <= DATA_BLOCKS; index++) {
        if (!sameBytes(await g.readBlock(volume, index), pattern(before, index, blockSize))) {
          throw new Error(`block ${index} does not hold what run #${before} wrote`)
        }
      }
      check(true, `previous run #${before}: ${DATA_BLOCKS} blocks intact`)
      check(sameBytes(await g.read(volume, RANGE_OFFSET, RANGE_LENGTH), pattern(before, 0, RANGE_LENGTH)), `previous run #${before}: byte range intact`)
    }
    const run = before + 1
    console.log(`run #${run}: writing`)

    // 2. Blocks: the first one durable (synced before the promise resolves), the rest acknowledged
    //    (handed to the OS) and issued concurrently, as an application with a queue depth would.
    await g.writeBlock(volume, 1, pattern(run, 1, blockSize), WriteConcern.WriteDurable)
    const writes: Array<Promise<void>> = []
    for (let index = 2; index <= DATA_BLOCKS; index++) {
      writes.push(g.writeBlock(volume, index, pattern(run, index, blockSize), WriteConcern.WriteAcknowledged))
    }
    await Promise.all(writes)

    // 3. A byte range that is not block-aligned: the engine reads, patches and rewrites both edge
    //    blocks, and the whole range lands atomically.
    await g.write(volume, RANGE_OFFSET, pattern(run, 0, RANGE_LENGTH), WriteConcern.WriteDurable)

    // 4. The run header last, durable: a later run trusts the data only once it sees the header.
    const header = new Uint8Array(blockSize)
    header.set(Buffer.from(`${HEADER_MAGIC}${run}\n`, 'utf8'))
    await g.writeBlock(volume, 0, header, WriteConcern.WriteDurable)

    console.log(`run #${run}: reading back`)
    for (let index = 1; index <= DATA_BLOCKS; index++) {
      if (!sameBytes(await g.readBlock(volume, index), pattern(run, index, blockSize))) {
        throw new Error(`block ${index} does not read back what was just written`)
      }
    }
    check(true, `${DATA_BLOCKS} blocks read back`)
    check(sameBytes(await g.read(volume, RANGE_OFFSET, RANGE_LENGTH), pattern(run, 0, RANGE_LENGTH)), `byte range of ${RANGE_LENGTH} bytes at offset ${RANGE_OFFSET} read back`)
    check(previousRun(await g.readBlock(volume, 0)) === run, 'run header read back')
    const untouched = await g.readBlock(volume, 1000)
    check(untouched.byteLength === blockSize && untouched.every((byte) => byte === 0), 'a never-written block reads as zeros')
    const scrub = await g.scrub(volume)
    check(scrub.badBlocks.length === 0, `scrub verified ${scrub.blocksChecked} blocks, no bad block`)

    const usage = await g.getVolumeUsageDetails(volume)
    console.log(`usage: ${usage.allocatedBlocks} blocks allocated, ${formatSize(usage.allocatedBytes)} of ${formatSize(usage.sizeBytes)} (thin provisioned)`)

    const m = await g.getVolumeMetrics(volume)
    console.log(`metrics of '${m.volumeName}' over ${m.windowSeconds.toFixed(1)} s:`)
    console.log(`  iops ${m.iops.toFixed(1)} (read ${m.readIops.toFixed(1)}, write ${m.writeIops.toFixed(1)}), throughput ${m.throughputMBps.toFixed(3)} MB/s`)
    console.log(`  latency mean ${m.latencyMs.toFixed(3)} ms, p50 ${m.latencyP50Ms.toFixed(3)} ms, p99 ${m.latencyP99Ms.toFixed(3)} ms, queue depth ${m.queueDepth}`)
    console.log(`  lifetime: ${m.readOps} reads (${m.readBytes} bytes), ${m.writeOps} writes (${m.writeBytes} bytes), ${m.errors} errors, ${m.checksumErrors} checksum errors, cache hit rate ${(m.cacheHitRate * 100).toFixed(0)}%`)

    const text = await g.metricsText()
    const samples = text.split('\n').filter((line) => line.length > 0 && !line.startsWith('#'))
    const shown = samples.filter((line) => /^galleonfs_(volumes |volume_(write_ops_total|read_ops_total|used_bytes|size_bytes)\{|store_blocks\{)/.test(line))
    console.log(`prometheus (${shown.length} of ${samples.length} samples):`)
    for (const line of shown) console.log(`  ${line}`)
  } finally {
    await g.close()
  }
  console.log('closed; run me again to check that the data survived')
  console.log('quickstart: OK')
}

try {
  await main()
} catch (err) {
  const code = isGalleonError(err) ? ` [${err.code}]` : ''
  console.error(`quickstart failed${code}: ${err instanceof Error ? err.message : String(err)}`)
  process.exitCode = 1
}
