// Runs the BlockStore conformance suite against every built-in backend.

import { MemoryLevel } from 'memory-level'
import { FileBlockStore } from '../../backends/file/index.js'
import { LevelBlockStore } from '../../backends/level/index.js'
import { MemoryBlockStore } from '../../backends/memory/index.js'
import { blockStoreSuite } from './index.js'

blockStoreSuite({ name: 'memory', factory: () => new MemoryBlockStore() })

blockStoreSuite({ name: 'level', factory: (location) => new LevelBlockStore({ location }) })

// The injected-db path: one memory-level database per location, so "reopening" a location finds the
// same data (the store does not close a db it did not open). memory-level has no durability, which is
// fine here: the durability the suite can check in-process is survival across close() and reopen.
const memoryDbs = new Map<string, MemoryLevel<string, Uint8Array>>()
blockStoreSuite({
  name: 'level (memory-level db)',
  factory: (location) => {
    let db = memoryDbs.get(location)
    if (db === undefined) {
      db = new MemoryLevel<string, Uint8Array>()
      memoryDbs.set(location, db)
    }
    return new LevelBlockStore({ db })
  }
})

blockStoreSuite({ name: 'file', factory: (location) => new FileBlockStore({ location }) })
