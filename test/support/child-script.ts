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
// Each process brings the tree up to date on first use: a file is transpiled again when its source
// is newer than its output. Writes go to a temporary name and are renamed into place, so two test
// processes doing this at once both leave whole files.

import { mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { basename, dirname, join, relative, sep } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { transformSync } from 'esbuild'

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

/** Transpiles every source file whose output is missing or older than it. */
function refresh (): void {
  if (fresh) return
  compilerOptions ??= (JSON.parse(readFileSync(join(ROOT, 'tsconfig.json'), 'utf8')) as { compilerOptions: Record<string, unknown> }).compilerOptions
  for (const tree of TREES) walk(join(ROOT, tree))
  fresh = true
}

function walk (dir: string): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) {
      if (entry.name !== 'node_modules' && !entry.name.startsWith('.')) walk(path)
    } else if (entry.isFile() && entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) {
      transpile(path)
    }
  }
}

function outputOf (source: string): string {
  return join(JS_ROOT, relative(ROOT, source)).replace(/\.ts$/, '.js')
}

function transpile (source: string): void {
  const output = outputOf(source)
  let outputTime = -1
  try { outputTime = statSync(output).mtimeMs } catch {}
  if (outputTime >= statSync(source).mtimeMs) return
  const { code } = transformSync(readFileSync(source, 'utf8'), {
    loader: 'ts',
    format: 'esm',
    target: 'es2022',
    sourcefile: source,
    sourcemap: 'inline',
    tsconfigRaw: { compilerOptions }
  })
  mkdirSync(dirname(output), { recursive: true })
  const temporary = `${output}.${process.pid}.tmp`
  writeFileSync(temporary, code)
  renameSync(temporary, output)
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
