// Child process of test/fuse-kms.test.ts: a process serving a FUSE mount keeps `data` open itself
// (async fs, as the README allows) while its KMS command runs (creating an encrypted volume wraps a
// data key; reopening the volume's key unwraps it), and prints what each step gave. Run through
// test/support/fuse-fuzz-watchdog.ts: a deadlock shows as a hang.

import { open } from 'node:fs/promises'
import { join } from 'node:path'
import { GalleonFS, commandKeyProvider } from '../../src/index.js'

const root = process.env.FUSE_KMS_ROOT as string
const say = (line: string): void => { process.stdout.write(line + '\n') }
const provider = commandKeyProvider({ keyId: 'kek-a', command: process.execPath, args: [process.env.FUSE_KMS_COMMAND as string] })

let g = await GalleonFS.open({ storagePath: join(root, 'store'), mount: 'fuse', keyProvider: provider })
const mountPoint = join(root, 'mnt')
await g.createVolume({ name: 'plain', sizeBytes: '1M' })
await g.mounts.mountVolume('plain', mountPoint)
const handle = await open(join(mountPoint, 'data'), 'r+')
say(`write ${(await handle.write(Buffer.alloc(4096, 0x61), 0, 4096, 0)).bytesWritten}`)
// The KMS command starts while this process holds its own mount's file open.
await g.createVolume({ name: 'secret', sizeBytes: '1M', storageClass: 'encrypted-storage', replicas: 1 })
await g.write('secret', 0, Buffer.alloc(4096, 0x62))
say('wrapped')
const back = Buffer.alloc(4)
await handle.read(back, 0, 4, 0)
say(`read ${back.toString('hex')}`)
await handle.close()
await g.close()
// Reopened: the unwrap runs at the first read, again with a file of the mount open.
g = await GalleonFS.open({ storagePath: join(root, 'store'), mount: 'fuse', keyProvider: provider })
await g.mounts.mountVolume('plain', mountPoint)
const again = await open(join(mountPoint, 'data'), 'r')
say(`secret ${Buffer.from(await g.read('secret', 0, 4)).toString('hex')}`)
await again.close()
await g.close()
say('done')
