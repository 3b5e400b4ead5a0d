// Child process of test/review-r53-close-on-exec.test.ts: serves a FUSE mount of an in-memory
// volume 'v' (its first block filled with 7) at argv[2], starts `sleep 30` as an application
// would start a worker, prints {"sleep": pid}, and serves until it is killed.

import { spawn } from 'node:child_process'
import { GalleonFS } from '../../src/index.js'

const mountPoint = process.argv[2]
if (mountPoint === undefined) throw new Error('usage: r53-mount-child.ts <mount point>')
const g = await GalleonFS.open({ inMemory: true, mount: 'fuse' })
await g.createVolume({ name: 'v', sizeBytes: '1M' })
await g.write('v', 0, new Uint8Array(4096).fill(7))
await g.mounts.mountVolume('v', mountPoint)
const sleep = spawn('sleep', ['30'], { stdio: 'ignore' })
process.stdout.write(`${JSON.stringify({ sleep: sleep.pid })}\n`)
setInterval(() => {}, 60_000)
