// Child of test/h69-backup-gc-clock.test.ts, run with the stepped wall clock preloaded
// (test/support/h65-clock-preload.ts): two GalleonFS instances (in memory) that take, hold and
// delete backups on a directory target as the parent asks over IPC, so that a backup can be held
// between its chunks and its manifest while a deletion runs elsewhere (another process, or the
// other instance of this one) after the wall clock stepped.
//
// Requests (see test/support/lease-children.ts): backup { instance, target, seed, hold },
// delete { instance, target, id, holdAt: 'deleteChunk' | 'deleteManifest' }, release, exit, and
//   open  { target }  opens the target with a new driver object (as a new process would)

import { DirectoryBackupTarget } from '../../backends/directory/index.js'
import { serveLeaseChild } from './lease-children.js'

await serveLeaseChild({
  instances: 2,
  ops: {
    open: async (_g, request) => {
      await new DirectoryBackupTarget({ path: request.target }).open()
      return 'opened'
    }
  }
})
