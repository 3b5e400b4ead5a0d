// Child of test/h45-durability-syscalls.test.ts: runs a GalleonFS workload on the `file` backend (small
// segments, so it rolls, compacts and reuses spare files) while strace records its file system calls.
//
// Usage: node h45-durability-child.js <storagePath> <markerFile>
//
// Every operation is framed by lines written with one write(2) each to <markerFile>, which strace
// records in order with everything else:
//   BEGIN <kind> <op>    just before the call (the operation cannot have touched the disk yet)
//   ACK <kind> <op>      just after its promise resolved
// kinds: cv createVolume, dw writeBlock WriteDurable, dr write() WriteDurable, aw writeBlock
// WriteAcknowledged, fl flush(), sn createSnapshot, dv deleteVolume, cl close.
// Every block written starts (after the engine's 8-byte header) with the ASCII tag
// `h45op<op, 6 digits>b<block within the op, 4 digits>.`, so the trace shows which write(2) carried it.

import { closeSync, openSync, writeSync } from 'node:fs'
import { GalleonFS, WriteConcern } from '../../src/index.js'

/** Options of the file store: small segments, so that a short workload rolls, compacts and reuses files. */
export const SEGMENT_BYTES = 512 * 1024
export const BLOCK_BYTES = 4096

const [storagePath, markerFile] = process.argv.slice(2)
if (storagePath === undefined || markerFile === undefined) throw new Error('usage: h45-durability-child <storagePath> <markerFile>')

const markerFd = openSync(markerFile, 'w')
let nextOp = 0

function mark (line: string): void {
  const bytes = Buffer.from(line + '\n')
  if (writeSync(markerFd, bytes) !== bytes.byteLength) throw new Error('short marker write')
}

/** Block data whose first bytes name the operation and the block within it. */
export function taggedBlock (op: number, block: number): Uint8Array {
  const data = new Uint8Array(BLOCK_BYTES).fill(0x2e)
  data.set(Buffer.from(`h45op${String(op).padStart(6, '0')}b${String(block).padStart(4, '0')}.`), 0)
  return data
}

/** Runs `call` framed by BEGIN and ACK lines. */
async function framed<T> (kind: string, call: (op: number) => Promise<T>): Promise<T> {
  const op = nextOp++
  mark(`BEGIN ${kind} ${op}`)
  const result = await call(op)
  mark(`ACK ${kind} ${op}`)
  return result
}

/** Runs `count` operations made by `make`, at most `depth` at once. */
async function concurrently (count: number, depth: number, make: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0
  const lane = async (): Promise<void> => {
    while (next < count) await make(next++)
  }
  await Promise.all(Array.from({ length: depth }, lane))
}

async function main (): Promise<void> {
  mark('OPENING')
  const g = await GalleonFS.open({ storagePath: storagePath as string, backend: 'file', backendOptions: { segmentBytes: SEGMENT_BYTES } })
  mark('OPEN')
  const vol = 'h45'
  await framed('cv', async () => await g.createVolume({ name: vol, sizeBytes: 4 * 1024 * 1024 }))
  // Fills several segments with durable single-block writes (group commit at 8 in flight).
  await concurrently(600, 8, async (i) => await framed('dw', async (op) => { await g.writeBlock(vol, i, taggedBlock(op, 0), WriteConcern.WriteDurable) }))
  // Overwrites all of it: the first segments die, compaction copies, renames to spares and unlinks,
  // and later segments are made from spare files.
  await concurrently(600, 8, async (i) => await framed('dw', async (op) => { await g.writeBlock(vol, i, taggedBlock(op, 0), WriteConcern.WriteDurable) }))
  // Multi-block durable writes.
  await concurrently(40, 4, async (i) => await framed('dr', async (op) => {
    const data = new Uint8Array(4 * BLOCK_BYTES)
    for (let b = 0; b < 4; b++) data.set(taggedBlock(op, b), b * BLOCK_BYTES)
    await g.write(vol, (640 + i * 4) * BLOCK_BYTES, data, WriteConcern.WriteDurable)
  }))
  // Acknowledged writes made durable by flush().
  await concurrently(200, 16, async (i) => await framed('aw', async (op) => { await g.writeBlock(vol, i * 3, taggedBlock(op, 0), WriteConcern.WriteAcknowledged) }))
  await framed('fl', async () => { await g.flush() })
  await framed('sn', async () => await g.createSnapshot(vol, 's1'))
  await concurrently(100, 8, async (i) => await framed('dw', async (op) => { await g.writeBlock(vol, i * 5, taggedBlock(op, 0), WriteConcern.WriteDurable) }))
  // A second volume, written durably and deleted.
  const other = 'h45-other'
  await framed('cv', async () => await g.createVolume({ name: other, sizeBytes: 1024 * 1024 }))
  await concurrently(20, 4, async (i) => await framed('dw', async (op) => { await g.writeBlock(other, i, taggedBlock(op, 0), WriteConcern.WriteDurable) }))
  await framed('dv', async () => { await g.deleteVolume(other) })
  await concurrently(150, 8, async (i) => await framed('dw', async (op) => { await g.writeBlock(vol, 700 + i, taggedBlock(op, 0), WriteConcern.WriteDurable) }))
  const stats = await g.getStorageStats()
  process.stdout.write(`STATS ${JSON.stringify(stats)}\n`)
  await framed('cl', async () => { await g.close() })
  closeSync(markerFd)
}

main().catch((err: unknown) => {
  process.stderr.write(`h45 child failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
  process.exit(3)
})
