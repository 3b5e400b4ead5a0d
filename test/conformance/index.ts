// Public entry of the conformance suites (`galleonfs/test/conformance`), so third-party backends can run them.

export { blockStoreSuite, type BlockStoreSuiteOptions } from './block-store.js'
