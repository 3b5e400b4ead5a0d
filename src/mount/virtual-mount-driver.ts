// The default mount driver, which presents nothing to the operating system.

import type { MountDriver } from '../drivers.js'
import { BUILT_IN_DRIVER_WORDS } from './mount-words.js'

/** The default mount driver: mounts exist for the VolumeFile API only; nothing appears in the file system. */
export class VirtualMountDriver implements MountDriver {
  readonly name = 'virtual'
  /** The words the fuse driver applies (this one applies none: it presents nothing to the OS), so that a call or a storage class written for one works with the other. */
  readonly options = BUILT_IN_DRIVER_WORDS
  async mount (): Promise<void> {}
  async unmount (): Promise<void> {}
}
