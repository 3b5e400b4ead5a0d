// Whether this machine can make FUSE mounts: why not (a visible skip reason), or undefined.

import { accessSync, constants, existsSync } from 'node:fs'

/** Undefined when /dev/fuse is usable and fusermount (Debian package fuse) is installed; else why not. */
export function fuseMissing (): string | undefined {
  try { accessSync('/dev/fuse', constants.R_OK | constants.W_OK) } catch { return 'no usable /dev/fuse on this machine' }
  if (!['/bin/fusermount', '/usr/bin/fusermount'].some((path) => existsSync(path))) return 'fusermount is not installed (Debian package fuse)'
  return undefined
}
