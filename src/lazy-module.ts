// Modules loaded on first use and kept.
//
// Optional parts (a block store's backend, fuse-native, etcd3, the key providers) are imported when
// an instance first needs them, so that importing galleonfs stays cheap and never requires them. An
// `import()` of a module already loaded is cheap in plain node, but under a module loader with hooks
// (tsx, a test runner's TypeScript loader, an APM agent) each one is a round trip to the loader's
// thread: about 2 ms of CPU per open() of an instance, which tests and daemons that open often pay.

/**
 * `load` run once, its module kept for every later call. A failed load is not kept: the next call
 * tries again (a package installed meanwhile is found).
 */
export function lazyModule<T> (load: () => Promise<T>): () => Promise<T> {
  let loaded: Promise<T> | undefined
  return async () => {
    loaded ??= load().catch((err: unknown) => {
      loaded = undefined
      throw err
    })
    return await loaded
  }
}
