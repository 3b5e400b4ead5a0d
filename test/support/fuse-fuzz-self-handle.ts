// Child process of test/fuse-model-fuzz.test.ts: the process serving FUSE mounts keeps `data` of
// one open itself (async fs, as the README allows) while mounts come and go, and prints what each
// step gave. Run through test/support/fuse-fuzz-watchdog.ts: a deadlock shows as a hang.

import { open } from 'node:fs/promises'
import { join } from 'node:path'
import { GalleonFS } from '../../src/index.js'

const root = process.env.FUSE_FUZZ_ROOT as string
const say = (line: string): void => { process.stdout.write(line + '\n') }
const errno = async (task: () => Promise<unknown>): Promise<string> => await task().then(() => 'ok', (err: NodeJS.ErrnoException) => err.code ?? String(err))

const g = await GalleonFS.open({ storagePath: join(root, 'store'), mount: 'fuse' })
const first = join(root, 'first')
const second = join(root, 'second')
await g.createVolume({ name: 'one', sizeBytes: '1M' })
await g.createVolume({ name: 'two', sizeBytes: '1M' })
await g.mounts.mountVolume('one', first)
await g.mounts.mountVolume('two', second)
const handle = await open(join(first, 'data'), 'r+')
const block = Buffer.alloc(4096, 0x61)
say(`write ${(await handle.write(block, 0, 4096, 8192)).bytesWritten}`)
// Another mount goes away while this process holds data of the first one open.
await g.mounts.unmountVolume(second)
say('unmounted the other mount')
await g.mounts.mountVolume('two', second)
say('mounted the other again')
// The first one itself, forced, with the handle open: the handle gets EIO, the volume keeps what was written.
await g.mounts.unmountVolume(first, { force: true })
say('forced unmount')
say(`stale read ${await errno(async () => await handle.read(Buffer.alloc(16), 0, 16, 8192))}`)
say(`stale write ${await errno(async () => await handle.write(Buffer.alloc(16, 0x62), 0, 16, 0))}`)
say(`stale fsync ${await errno(async () => await handle.sync())}`)
say(`stale ftruncate ${await errno(async () => await handle.truncate(4096))} ${await errno(async () => await handle.truncate(2 << 20))}`)
say(`volume ${Buffer.from(await g.read('one', 8192, 4)).toString('hex')} ${Buffer.from(await g.read('one', 0, 4)).toString('hex')}`)
await g.mounts.mountVolume('one', first)
say('mounted again')
// A handle on the new mount, still open when the instance closes (which unmounts everything).
const fresh = await open(join(first, 'data'), 'r')
const back = Buffer.alloc(4)
await fresh.read(back, 0, 4, 8192)
say(`fresh read ${back.toString('hex')}`)
await handle.close().catch(() => {})
await g.close()
say('closed')
say(`after close ${await errno(async () => await fresh.read(Buffer.alloc(4), 0, 4, 0))}`)
await fresh.close().catch(() => {})
say('done')
