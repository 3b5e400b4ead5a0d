// A mount driver of one's own for tests of option words: named "mine", it lists the words it is
// given (none: it takes every word) and records the words of each mount it is asked to make.

import type { MountDriver, MountedVolume } from '../../src/index.js'

/** `driver(options)` makes such a driver; `seen` holds the words of every mount any of them made, in order. */
export function recordingMountDrivers (): { seen: string[][], driver: (options?: readonly string[]) => MountDriver } {
  const seen: string[][] = []
  const driver = (options?: readonly string[]): MountDriver => ({
    name: 'mine',
    ...(options === undefined ? {} : { options }),
    mount: async (volume: MountedVolume) => { seen.push([...volume.options]) },
    unmount: async () => {}
  })
  return { seen, driver }
}
