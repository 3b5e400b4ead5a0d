// Assertions shared by tests.

import assert from 'node:assert/strict'
import { GalleonError, type GalleonErrorCode } from '../../src/errors.js'

/** The GalleonError `promise` rejects with (the test fails when it resolves or rejects otherwise). */
export async function failure (promise: Promise<unknown>): Promise<GalleonError> {
  try {
    await promise
  } catch (err) {
    assert.ok(err instanceof GalleonError, String(err))
    return err
  }
  assert.fail('expected a failure')
}

/** What a call came to: 'ok', or its error's code and message (never throws). */
export async function outcomeOf (call: Promise<unknown>): Promise<{ code: string, message: string }> {
  try {
    await call
    return { code: 'ok', message: '' }
  } catch (err) {
    return { code: (err as GalleonError).code ?? 'not a GalleonError', message: (err as Error).message }
  }
}

/** `promise` rejects with a GalleonError of `code` whose message mentions each of `mentions`. */
export async function expectCode (promise: Promise<unknown>, code: GalleonErrorCode, ...mentions: string[]): Promise<GalleonError> {
  const err = await failure(promise)
  assert.equal(err.code, code, err.message)
  for (const text of mentions) assert.ok(err.message.includes(text), `message should mention ${text}: ${err.message}`)
  return err
}

/**
 * For assert.rejects: the error is a GalleonError of code `expected` (its message shown otherwise),
 * whose message matches `message` when given.
 */
export function rejectsWithCode (expected: GalleonErrorCode, message?: RegExp) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof GalleonError, `expected a GalleonError, got ${String(err)}`)
    assert.equal(err.code, expected, err.message)
    if (message !== undefined) assert.match(err.message, message)
    return true
  }
}
