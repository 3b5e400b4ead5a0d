// Child of test/review-r30-backup-leases.test.ts, run with the stepped wall clock preloaded
// (test/support/h65-clock-preload.ts), as test/support/h69-child.ts with adoption: one GalleonFS
// instance (in memory) takes, adopts and deletes backups on a directory target as the parent asks
// over IPC, and can stop at a chosen call until the parent releases it.
//
// Requests (see test/support/lease-children.ts): backup { target, seed, encrypted, hold },
// delete { target, id, holdAt: 'chunkTime' | 'removeDead', graceSeconds }, release, and
//   adopt  { target, id, hold }  adoptBackup; hold: it stops in its first putManifest (its lease
//          written, every chunk checked), says { event: 'held' }, and goes on at { op: 'release' }

import { heldOr, serveLeaseChild } from './lease-children.js'

await serveLeaseChild({
  instances: 1,
  // The storage class of backup { encrypted: true }.
  setup: async (g) => { await g.createStorageClass({ name: 'sealed', provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } }) },
  ops: {
    adopt: async (g, request) => await g.adoptBackup(request.id as string, { target: heldOr(request, request.hold === true ? 'putManifest' : undefined) })
  }
})
