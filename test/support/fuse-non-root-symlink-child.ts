// Child process of test/fuse-non-root.test.ts, run as an unprivileged user: it mounts a
// volume at a path reached through a symbolic link (a mount point under a linked directory, as
// /var/run -> /run), opens a file of that mount itself, then mounts another volume. The mount must
// be refused (BUSY) as it is for a plain path: fusermount started with that descriptor would hang.

import { open, symlink, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { GalleonFS } from '../../src/index.js'

const root = process.env.FUSE_NON_ROOT_DIR as string
const say = (line: string): void => { process.stdout.write(line + '\n') }
await mkdir(join(root, 'real'))
await symlink(join(root, 'real'), join(root, 'linked'))
const g = await GalleonFS.open({ storagePath: join(root, 'store'), mount: 'fuse' })
await g.createVolume({ name: 'one', sizeBytes: '1M' })
await g.createVolume({ name: 'two', sizeBytes: '1M' })
await g.mounts.mountVolume('one', join(root, 'linked', 'one'))
say('mounted one through the link')
const handle = await open(join(root, 'linked', 'one', 'data'), 'r+')
const refused = await g.mounts.mountVolume('two', join(root, 'two')).then(() => 'mounted', (err: { code?: string }) => `${err.code ?? ''}`)
say(`while open: ${refused}`)
await handle.close()
await g.close()
say('done')
