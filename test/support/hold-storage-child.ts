// Child process of test/level-busy-holder.test.ts: opens the storage at argv[2] on the backend
// argv[3], prints 'held', and keeps it open until its stdin ends (or it is killed).

import { GalleonFS } from '../../src/index.js'

const [storagePath, backend] = process.argv.slice(2)
if (storagePath === undefined || (backend !== 'level' && backend !== 'file')) throw new Error('usage: hold-storage-child.ts <storagePath> <level|file>')
const g = await GalleonFS.open({ storagePath, backend })
process.stdout.write('held\n')
process.stdin.resume()
process.stdin.on('end', () => { void g.close().then(() => process.exit(0)) })
