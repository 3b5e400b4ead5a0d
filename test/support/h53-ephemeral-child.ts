// Child of test/h53-volumes-pools.test.ts: opens the storage at argv[2], creates an ephemeral and a
// persistent volume, writes one block to each durably, prints READY and dies by SIGKILL (no close()).

import { GalleonFS, VolumeType, WriteConcern } from '../../src/index.js'

const storagePath = process.argv[2] as string
const g = await GalleonFS.open({ storagePath })
await g.createVolume({ name: 'scratch', type: VolumeType.Ephemeral, sizeBytes: '1M' })
await g.createVolume({ name: 'kept', sizeBytes: '1M' })
await g.writeBlock('scratch', 0, new Uint8Array(4096).fill(0x5a), WriteConcern.WriteDurable)
await g.writeBlock('kept', 0, new Uint8Array(4096).fill(0x4b), WriteConcern.WriteDurable)
process.stdout.write('READY\n', () => { process.kill(process.pid, 'SIGKILL') })
