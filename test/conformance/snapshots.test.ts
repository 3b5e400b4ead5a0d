// Runs the snapshot and clone suite on every built-in block-store backend.

import { GalleonFS } from '../../src/index.js'
import { snapshotSuite } from './index.js'

snapshotSuite({ name: 'memory', persistent: false, open: async () => await GalleonFS.open({ inMemory: true }) })

snapshotSuite({ name: 'level', persistent: true, open: async (location) => await GalleonFS.open({ storagePath: location, backend: 'level' }) })

snapshotSuite({ name: 'file', persistent: true, open: async (location) => await GalleonFS.open({ storagePath: location, backend: 'file' }) })
