// Custom storage classes as the facade creates and deletes them: checked against the pools they
// name and the volumes that use them.

import { GalleonError, quoted } from '../errors.js'
import type { StorageClass } from '../types.js'
import type { FacadeHost } from './host.js'
import { checkClassMountWords } from '../mount/mount-words.js'

/** The work of GalleonFS.createStorageClass, once the definition is parsed and the caller checked. */
export async function createStorageClass (host: FacadeHost, storageClass: StorageClass): Promise<StorageClass> {
  // A word no mount driver here applies would make every mount of its volumes fail (or, before,
  // be ignored): refused now, while the class can still be written differently.
  checkClassMountWords(storageClass.name, storageClass.mountOptions, host.mounts.acceptedOptions)
  // The name is taken, and the pool held, from these checks until the class is stored: a
  // concurrent create of the same name, or deletion of the pool, cannot slip in between.
  const unclaim = host.catalog.claimStorageClass(storageClass.name, 'create')
  let releasePool: (() => void) | undefined
  try {
    const pool = storageClass.parameters.pool
    if (pool !== undefined) {
      try {
        releasePool = host.pools.hold(pool)
      } catch (err) {
        if (!(err instanceof GalleonError) || err.code !== 'POOL_NOT_FOUND') throw err
        throw new GalleonError('POOL_NOT_FOUND', `storage class ${storageClass.name} names pool ${quoted(pool)}, which does not exist; create the pool first with createPool() (listPools() shows the existing ones)`, { cause: err })
      }
    }
    await host.catalog.putStorageClass(storageClass)
  } finally {
    releasePool?.()
    unclaim()
  }
  host.emit('storage-class:created', structuredClone(storageClass))
  return structuredClone(storageClass)
}

/** The work of GalleonFS.deleteStorageClass, once the caller is checked (`getStorageClass` is the public call). */
export async function deleteStorageClass (host: FacadeHost, getStorageClass: (name: string) => Promise<StorageClass>, name: string): Promise<void> {
  const storageClass = await getStorageClass(name)
  if (storageClass.builtIn) throw new GalleonError('INVALID_ARGUMENT', `storage class ${name} is built in and cannot be deleted`)
  // A volume interrupted while it became replicated goes back to its former class (convertingFrom).
  const users = host.catalog.volumes().filter((record) => record.storageClass === name || record.convertingFrom?.storageClass === name)
  if (users.length > 0) {
    throw new GalleonError('BUSY', `storage class ${name} is used by ${users.length} volume(s) (${users.slice(0, 3).map((r) => r.name).join(', ')}); delete them first`)
  }
  // From here no volume can start using it (refused while volumes being set up use it).
  const unclaim = host.catalog.claimStorageClass(name, 'delete')
  try {
    await host.catalog.deleteStorageClass(name)
  } finally {
    unclaim()
  }
  host.emit('storage-class:deleted', storageClass)
}
