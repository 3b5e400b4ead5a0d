// Child process of test/fuse-non-root.test.ts, run as an unprivileged user: it serves FUSE mounts
// (libfuse mounts through fusermount then) while it has a file of one of them open itself, and
// prints what each step gave. Run through test/support/fuse-fuzz-watchdog.ts: a hang shows as one.

import { open } from 'node:fs/promises'
import { join } from 'node:path'
import { GalleonFS } from '../../src/index.js'

const root = process.env.FUSE_NON_ROOT_DIR as string
const say = (line: string): void => { process.stdout.write(line + '\n') }
const g = await GalleonFS.open({ storagePath: join(root, 'store'), mount: 'fuse' })
await g.createVolume({ name: 'one', sizeBytes: '1M' })
await g.createVolume({ name: 'two', sizeBytes: '1M' })
await g.mounts.mountVolume('one', join(root, 'one'))
say(`uid ${process.getuid?.() ?? -1}, mounted one`)
const handle = await open(join(root, 'one', 'data'), 'r+')
await handle.write(Buffer.alloc(4096, 0x61), 0, 4096, 0)
// Mounting now would start fusermount with that descriptor inherited: refused, not hung.
const refused = await g.mounts.mountVolume('two', join(root, 'two')).then(() => 'mounted', (err: { code?: string, message?: string }) => `${err.code ?? ''} ${/open, a file of one of its own FUSE mounts/.test(err.message ?? '') ? 'names the open file' : String(err.message)}`)
say(`while open: ${refused}`)
await handle.close()
await g.mounts.mountVolume('two', join(root, 'two'))
say('closed it, mounted two')
const other = await open(join(root, 'two', 'data'), 'r+')
await other.write(Buffer.alloc(4096, 0x62), 0, 4096, 4096)
await other.close()
say(`one ${Buffer.from(await g.read('one', 0, 2)).toString('hex')} two ${Buffer.from(await g.read('two', 4096, 2)).toString('hex')}`)
await g.close()
say('done')
