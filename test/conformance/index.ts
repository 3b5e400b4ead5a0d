// Public entry of the conformance suites (`galleonfs/test/conformance`), so third-party backends can run them.

export { blockStoreSuite, BlockStoreModel, type BlockStoreSuiteOptions } from './block-store.js'
export { addr, put, del, bytesOf, seededRandom } from './fixtures.js'
export { snapshotSuite, type SnapshotSuiteOptions } from './volume-snapshots.js'
export { backupTargetSuite, type BackupTargetSuiteOptions } from './backup-target.js'
export { transportSuite, type TransportSuiteOptions } from './transport.js'
export { coordinatorSuite, testNode, type CoordinatorSuiteOptions, type CoordinatorTestCluster } from './coordinator.js'
