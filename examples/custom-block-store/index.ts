// The file-per-block store as a registered driver: importing this module registers it under the
// name `file-per-block`, so `GalleonFS.open({ storagePath, backend: 'file-per-block' })` and the
// daemon's `[drivers] block_store = "file-per-block"` (with this file in `[drivers] modules`) use it.

import { join } from 'node:path'
import { GalleonError, registerDriver, type DriverDescriptor } from '../../src/index.js'
import { FilePerBlockStore } from './file-per-block-store.js'

export { FilePerBlockStore, type FilePerBlockStoreOptions } from './file-per-block-store.js'

/** The options the registered driver accepts (`backendOptions` of open(), `block_store_options` of the daemon). */
export interface FilePerBlockDriverOptions {
  /** Directory of the store (default `<storagePath>/file-per-block`). */
  location?: string
  /** Journal size at which written files are synced and the journal emptied (default 4 MiB). */
  checkpointBytes?: number
}

/** The driver descriptor of the file-per-block store. */
export const filePerBlockDriver: DriverDescriptor<'blockStore', FilePerBlockDriverOptions> = {
  kind: 'blockStore',
  name: 'file-per-block',
  description: 'one file per block version beside a write-ahead journal (examples/custom-block-store)',
  options: {
    location: { type: 'string', description: 'directory of the store (default <storagePath>/file-per-block)' },
    checkpointBytes: {
      type: 'number',
      description: 'journal size at which written files are synced and the journal emptied',
      validate: (value) => { if (!Number.isSafeInteger(value) || (value as number) <= 0) throw new Error(`must be a positive integer, got ${String(value)}`) }
    }
  },
  create: (options, context) => {
    const location = options.location ?? (context.storagePath === undefined ? undefined : join(context.storagePath, 'file-per-block'))
    if (location === undefined) throw new GalleonError('INVALID_ARGUMENT', "the file-per-block store keeps its files on disk: open with storagePath, or give backendOptions.location")
    return new FilePerBlockStore({ location, ...(options.checkpointBytes === undefined ? {} : { checkpointBytes: options.checkpointBytes }) })
  }
}

registerDriver(filePerBlockDriver)
