// A handler attached at once to a call a test starts early and checks later.

/**
 * Returns `promise` itself, with a no-op rejection handler attached to it now: a test that starts
 * a call early on purpose (to race it with something else) and awaits other things before it
 * checks the outcome (`await assert.rejects(p, ...)`, `await p`) must not let a rejection in
 * between count as unhandled, which node:test reports as a failure of the test. The check itself
 * is unchanged: awaiting the returned promise still rejects with the call's error.
 */
export function observed<T> (promise: Promise<T>): Promise<T> {
  promise.catch(() => {})
  return promise
}
