// Runs the repository's TypeScript scripts in child processes without tsx's loader.
//
// Tests start child processes by the hundred (crash children killed with SIGKILL, the CLI, the
// daemon). Under `--import tsx` each of them spends about 0.4 s of CPU before its first line runs,
// in loader hooks on every module it imports. Here the sources are transpiled once, file by file, by
// esbuild (the same transform tsx applies) into `.test-js/` beside them, and the children run the
// JavaScript with plain `node`. The tree keeps the source layout one level down, so everything a
// module finds relative to itself still resolves: node_modules, package.json (`"type": "module"`),
// and the native addon that native-aead.ts looks for above its own directory.
//
// Each process brings the tree up to date on first use: an output ends with a hash of the text it was
// made from (and of the transform's settings), and a file is transpiled again when its source hashes
// otherwise. Times are not compared: a source copied or unpacked with an older mtime, or edited while
// another process transpiled it, would leave stale code. Outputs whose source is gone are removed,
// so a deleted or renamed module fails to import as it does under tsx. Writes go to a temporary name
// and are renamed into place, so two test processes doing this at once both leave whole files.

import { createHash } from 'node:crypto'
import type { ChildProcess } from 'node:child_process'
import { closeSync, fstatSync, type Dirent, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, unlinkSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { basename, dirname, join, relative, sep } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { transformSync, version as esbuildVersion } from 'esbuild'

/** The transpiled tree (ignored by git). */
const JS_DIR = '.test-js'
/** The repository (also when this module runs as its transpiled copy, in a child). */
export const ROOT = ((here: string) => basename(here) === JS_DIR ? dirname(here) : here)(fileURLToPath(new URL('../..', import.meta.url)).replace(/[\\/]$/, ''))
export const JS_ROOT = join(ROOT, JS_DIR)
/** tsx's loader, absolute so that it is found from any working directory. */
export const TSX = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href

/** The directories whose TypeScript children may import. */
const TREES = ['src', 'backends', 'examples', 'test']

let fresh = false
let compilerOptions: Record<string, unknown> | undefined
/** What besides a source's text decides its output. */
let settings = ''

/** Transpiles every source file whose output is missing or was made from other text; removes outputs of deleted sources. */
function refresh (): void {
  if (fresh) return
  compilerOptions ??= (JSON.parse(readFileSync(join(ROOT, 'tsconfig.json'), 'utf8')) as { compilerOptions: Record<string, unknown> }).compilerOptions
  settings = `esbuild ${esbuildVersion} ${JSON.stringify(compilerOptions)} sourcemap=linked`
  const outputs = new Set<string>()
  for (const tree of TREES) walk(join(ROOT, tree), outputs)
  for (const tree of TREES) prune(join(JS_ROOT, tree), outputs)
  fresh = true
}

/** The entries of `dir`; none when it does not exist. */
function entriesOf (dir: string): Dirent[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
}

function walk (dir: string, outputs: Set<string>): void {
  for (const entry of entriesOf(dir)) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) {
      if (entry.name !== 'node_modules' && !entry.name.startsWith('.')) walk(path, outputs)
    } else if (entry.isFile() && entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) {
      outputs.add(transpile(path))
    }
  }
}

/** Removes the outputs under `dir` that no source makes any more (other processes' temporary files stay). */
function prune (dir: string, outputs: ReadonlySet<string>): void {
  for (const entry of entriesOf(dir)) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) {
      prune(path, outputs)
    } else if ((entry.name.endsWith('.js') && !outputs.has(path)) || (entry.name.endsWith('.js.map') && !outputs.has(path.slice(0, -'.map'.length)))) {
      try { unlinkSync(path) } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      }
    }
  }
}

/** Whether the file at `path` ends with `tail`. */
function endsWith (path: string, tail: string): boolean {
  let fd: number
  try { fd = openSync(path, 'r') } catch { return false }
  try {
    const expected = Buffer.from(tail)
    const size = fstatSync(fd).size
    if (size < expected.length) return false
    const found = Buffer.alloc(expected.length)
    readSync(fd, found, 0, found.length, size - found.length)
    return found.equals(expected)
  } finally {
    closeSync(fd)
  }
}

function outputOf (source: string): string {
  return join(JS_ROOT, relative(ROOT, source)).replace(/\.ts$/, '.js')
}

/** Brings the output of `source` up to date; returns its path. */
function transpile (source: string): string {
  const output = outputOf(source)
  const text = readFileSync(source, 'utf8')
  // Read once: the output says which text it was made from, whatever happens to the file after.
  const stamp = `\n//# test-js-source=${createHash('sha256').update(settings).update('\0').update(text).digest('hex')}\n`
  if (endsWith(output, stamp)) return output
  // The source map goes to a file of its own, named by a comment: node reads it only when asked to
  // (--enable-source-maps, for a child's stack traces in the sources' lines), and a child no longer
  // reads and scans an inline copy (which made each output about three times its size) at every start.
  const { code, map } = transformSync(text, {
    loader: 'ts',
    format: 'esm',
    target: 'es2022',
    sourcefile: source,
    sourcemap: 'external',
    tsconfigRaw: { compilerOptions }
  })
  mkdirSync(dirname(output), { recursive: true })
  const temporaryMap = `${output}.map.${process.pid}.tmp`
  writeFileSync(temporaryMap, map)
  renameSync(temporaryMap, `${output}.map`)
  const temporary = `${output}.${process.pid}.tmp`
  writeFileSync(temporary, `${code}//# sourceMappingURL=${basename(output)}.map${stamp}`)
  renameSync(temporary, output)
  return output
}

/**
 * The node arguments that run `script` (a .ts file of this repository): its transpiled copy, or
 * `--import tsx` and the script itself when it lies outside the transpiled trees, or when `tsx` is
 * set (a child that itself imports TypeScript named at run time, such as a driver module).
 */
export function scriptArgs (script: string, options: { tsx?: boolean } = {}): string[] {
  const path = relative(ROOT, script)
  if (options.tsx === true || !script.endsWith('.ts') || path.startsWith('..') || !TREES.includes(path.split(sep)[0] ?? '')) return ['--import', TSX, script]
  refresh()
  return [outputOf(script)]
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
