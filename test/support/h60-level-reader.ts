// The reader child of test/h60-eio.test.ts's level read case: opens the storage given as its
// argument on the level backend, makes the kernel drop its cached pages of the table files (FUSE
// invalidates a file's pages when it is opened), says 'ready', and once told (the parent has made
// the table files unreadable meanwhile) reads block 7 of volume 'a' and prints the outcome.
import { open } from 'node:fs/promises'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { GalleonFS } from '../../src/index.js'

const storagePath = process.argv[2] as string
const g = await GalleonFS.open({ storagePath, backend: 'level' })
for (const name of await readdir(join(storagePath, 'blocks-level'))) {
  const handle = await open(join(storagePath, 'blocks-level', name), 'r').catch(() => undefined)
  await handle?.close()
}
process.send?.('ready')
await new Promise((resolve) => process.once('message', resolve))
try {
  const data = await g.readBlock('a', 7)
  console.log(`read returned ${data.byteLength} bytes`)
} catch (err) {
  console.log(`read rejected ${(err as { code?: string }).code ?? ''}: ${(err as Error).message}`)
}
await g.close().catch(() => {})
process.exit(0)
