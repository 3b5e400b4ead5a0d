// Runs the repository's TypeScript scripts in child processes without a TypeScript loader.
//
// Tests start child processes by the hundred (crash children killed with SIGKILL, the CLI, the
// daemon). Under `--import tsx` each of them spends about 0.4 s of CPU before its first line runs,
// in loader hooks on every module it imports. Here they run the transpiled copies that
// test/support/transpile.mjs keeps in `.test-js/` (brought up to date once per process, on first
// use) with plain `node`.

import type { ChildProcess } from 'node:child_process'
import { join, relative, sep } from 'node:path'
import { pathToFileURL } from 'node:url'
import { JS_ROOT, ROOT, TREES, outputOf, refresh } from './transpile.mjs'

export { JS_ROOT, ROOT }
/** The tests' TypeScript loader (ts-loader.mjs), absolute so that it is found from any working directory. */
export const TS_LOADER = pathToFileURL(join(ROOT, 'test', 'support', 'ts-loader.mjs')).href

/** Set once this process has brought the transpiled tree up to date (see scriptArgs). */
let fresh = false

/**
 * The node arguments that run `script` (a .ts file of this repository): its transpiled copy, or
 * the tests' TypeScript loader and the script itself when it lies outside the transpiled trees, or
 * when `tsx` is set (a child that itself imports TypeScript named at run time, such as a driver
 * module).
 */
export function scriptArgs (script: string, options: { tsx?: boolean } = {}): string[] {
  const path = relative(ROOT, script)
  if (options.tsx === true || !script.endsWith('.ts') || path.startsWith('..') || !TREES.includes(path.split(sep)[0] ?? '')) return ['--import', TS_LOADER, script]
  if (!fresh) {
    refresh()
    fresh = true
  }
  return [outputOf(script)]
}

/** `scriptArgs` split as `fork()` takes them: the module to run and node's options before it. */
export function forkArgs (script: string, options: { tsx?: boolean } = {}): { modulePath: string, execArgv: string[] } {
  const args = scriptArgs(script, options)
  return { modulePath: args[args.length - 1] as string, execArgv: args.slice(0, -1) }
}

/**
 * Resolves once `child` has exited, also when it already has: `once(child, 'exit')` after the
 * event would wait for ever, and, with nothing else pending, node:test then cancels the whole file
 * ("Promise resolution is still pending but the event loop has already resolved") instead of
 * reporting why the child ended early.
 */
export async function childExit (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  await new Promise<void>((resolve) => { child.once('exit', () => { resolve() }) })
}
