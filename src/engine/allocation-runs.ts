// Which blocks of a volume's view hold data, as runs of allocated and unallocated blocks (what a
// sparse copy, a resync and an NBD block-status reply ask for).

import type { VolumeBlocks } from './volume-blocks.js'

/** The body of BlockEngine.allocationRuns (documented there). */
export function allocationRuns (volume: VolumeBlocks, first: number, last: number, at: number): Array<[number, number, boolean]> {
  const runs: Array<[number, number, boolean]> = []
  // The first block not yet in a run; the run of allocated blocks that ends just before it, if any.
  let next = first
  let run: [number, number, boolean] | undefined
  volume.map.forEachAllocated(first, last, at, (index) => {
    if (run !== undefined && index === next) {
      run[1]++
    } else {
      if (index > next) runs.push([next, index - next, false])
      run = [index, 1, true]
      runs.push(run)
    }
    next = index + 1
  })
  if (next <= last) runs.push([next, last - next + 1, false])
  return runs
}
