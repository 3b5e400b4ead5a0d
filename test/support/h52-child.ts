// Child of test/h52-storage-paths.test.ts. `hold <storagePath>`: opens the storage, prints
// `READY <pid>`, then writes 8 KiB runs (two blocks, each run one byte value) durably until killed.
// `open <storagePath>`: opens it, reads volume v, closes, and prints one JSON line of what happened.

import { GalleonFS, WriteConcern } from '../../src/index.js'

const [mode, storagePath] = process.argv.slice(2) as [string, string]
const unhandled: string[] = []
process.on('unhandledRejection', (err) => { unhandled.push(String(err)) })

if (mode === 'hold') {
  const g = await GalleonFS.open({ storagePath })
  const volume = (await g.listVolumes())[0] ?? await g.createVolume({ name: 'v', sizeBytes: '1M' })
  process.stdout.write(`READY ${process.pid}\n`)
  for (let i = 1; ; i++) await g.write(volume, (i % 128) * 8192, new Uint8Array(8192).fill(i & 0xff), WriteConcern.WriteDurable)
} else {
  let result: Record<string, unknown>
  try {
    const g = await GalleonFS.open({ storagePath })
    const bytes = await g.read('v', 0, 8192)
    // Every stored block version verified, not only the two read.
    const scrub = await g.scrub('v')
    await g.close()
    result = { opened: true, first: bytes[0], uniform: bytes.every((byte) => byte === bytes[0]), badBlocks: scrub.badBlocks.length }
  } catch (err) {
    result = { opened: false, code: (err as { code?: unknown }).code, galleon: (err as Error).name, message: String((err as Error).message) }
  }
  process.stdout.write(JSON.stringify({ ...result, unhandled }) + '\n')
}
