// The repository's TypeScript, transpiled file by file by esbuild (the transform tsx applies) into
// `.test-js/` beside the sources, for the test processes and the children they start.
//
// Used two ways: child-script.ts runs children from the transpiled tree with plain `node`, and the
// test loader (ts-loader.mjs) hands the transpiled text to node for the sources themselves.
//
// An output ends with a hash of the text it was made from (and of the transform's settings), and a
// file is transpiled again when its source hashes otherwise. Times are not compared: a source copied
// or unpacked with an older mtime, or edited while another process transpiled it, would leave stale
// code. Writes go to a temporary name and are renamed into place, so two test processes doing this at
// once both leave whole files. The tree keeps the source layout one level down, so everything a
// module finds relative to itself still resolves: node_modules, package.json (`"type": "module"`),
// and the native addon that native-aead.ts looks for above its own directory.
//
// Plain JavaScript: the loader imports it before any TypeScript can load.

import { createHash } from 'node:crypto'
import { closeSync, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, unlinkSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { basename, dirname, join, relative, sep } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The transpiled tree (ignored by git). */
const JS_DIR = '.test-js'
/** The repository (also when this module runs as its copy in the transpiled tree, in a child). */
export const ROOT = ((here) => basename(here) === JS_DIR ? dirname(here) : here)(fileURLToPath(new URL('../..', import.meta.url)).replace(/[\\/]$/, ''))
export const JS_ROOT = join(ROOT, JS_DIR)
/** The directories whose sources are transpiled. */
export const TREES = ['src', 'backends', 'examples', 'test']

const require = createRequire(import.meta.url)
let esbuild
/** esbuild, loaded when a file needs transpiling (most runs find every output current). */
function transformer () {
  esbuild ??= require('esbuild')
  return esbuild
}

let settingsText
/** What besides a source's text decides its output. */
function settings () {
  if (settingsText === undefined) {
    const { compilerOptions } = JSON.parse(readFileSync(join(ROOT, 'tsconfig.json'), 'utf8'))
    const { version } = JSON.parse(readFileSync(require.resolve('esbuild/package.json'), 'utf8'))
    settingsText = { compilerOptions, text: `esbuild ${version} ${JSON.stringify(compilerOptions)} sourcemap=linked sourcesContent=false` }
  }
  return settingsText
}

/** Whether `path` (relative to the repository or absolute) is a source of the transpiled trees. */
export function inTrees (path) {
  const rel = relative(ROOT, path)
  return path.endsWith('.ts') && !path.endsWith('.d.ts') && !rel.startsWith('..') && TREES.includes(rel.split(sep)[0] ?? '')
}

/** Where the output of `source` (a .ts file of the trees) goes. */
export function outputOf (source) {
  return join(JS_ROOT, relative(ROOT, source)).replace(/\.ts$/, '.js')
}

/** Whether the file at `path` ends with `tail`. */
function endsWith (path, tail) {
  let fd
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

/**
 * Brings the output of `source` up to date; returns its path, and its text when this call made it
 * (`undefined` when the output was current).
 */
export function transpile (source) {
  const output = outputOf(source)
  const text = readFileSync(source, 'utf8')
  const { compilerOptions, text: settingsStamp } = settings()
  // Read once: the output says which text it was made from, whatever happens to the file after.
  const stamp = `\n//# test-js-source=${createHash('sha256').update(settingsStamp).update('\0').update(text).digest('hex')}\n`
  if (endsWith(output, stamp)) return { output, code: undefined }
  // The source map goes to a file of its own, named by a comment: node reads it only when asked to
  // (--enable-source-maps, for stack traces in the sources' lines), and a child no longer reads and
  // scans an inline copy (which made each output about three times its size) at every start.
  const { code, map } = transformer().transformSync(text, {
    loader: 'ts',
    format: 'esm',
    target: 'es2022',
    sourcefile: source,
    sourcemap: 'external',
    // The sources are on disk where the map names them: without their text the maps are a third
    // of the size, and every test process parses the map of each module it loads (source maps on).
    sourcesContent: false,
    tsconfigRaw: { compilerOptions }
  })
  mkdirSync(dirname(output), { recursive: true })
  const temporaryMap = `${output}.map.${process.pid}.tmp`
  writeFileSync(temporaryMap, map)
  renameSync(temporaryMap, `${output}.map`)
  const temporary = `${output}.${process.pid}.tmp`
  const whole = `${code}//# sourceMappingURL=${basename(output)}.map${stamp}`
  writeFileSync(temporary, whole)
  renameSync(temporary, output)
  return { output, code: whole }
}

/**
 * Brings the copy of `source` (a JavaScript module of the trees, such as this one) up to date, so
 * that transpiled modules importing it find it; returns the copy's path.
 */
function copy (source) {
  const output = join(JS_ROOT, relative(ROOT, source))
  const text = readFileSync(source)
  let current
  try { current = readFileSync(output) } catch (err) { if (err.code !== 'ENOENT') throw err }
  if (current === undefined || !current.equals(text)) {
    mkdirSync(dirname(output), { recursive: true })
    const temporary = `${output}.${process.pid}.tmp`
    writeFileSync(temporary, text)
    renameSync(temporary, output)
  }
  return output
}

/** Transpiles a TypeScript file outside the trees (not kept), with its source map inline. */
export function transpileLoose (source) {
  return transformer().transformSync(readFileSync(source, 'utf8'), {
    loader: 'ts',
    format: 'esm',
    target: 'es2022',
    sourcefile: source,
    sourcemap: 'inline',
    tsconfigRaw: { compilerOptions: settings().compilerOptions }
  }).code
}

/** The entries of `dir`; none when it does not exist. */
function entriesOf (dir) {
  try {
    return readdirSync(dir, { withFileTypes: true })
  } catch (err) {
    if (err.code === 'ENOENT') return []
    throw err
  }
}

function walk (dir, outputs) {
  for (const entry of entriesOf(dir)) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) {
      if (entry.name !== 'node_modules' && !entry.name.startsWith('.')) walk(path, outputs)
    } else if (entry.isFile() && entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) {
      outputs.add(transpile(path).output)
    } else if (entry.isFile() && entry.name.endsWith('.mjs')) {
      outputs.add(copy(path))
    }
  }
}

/**
 * Removes the outputs under `dir` that no source makes any more (other processes' temporary files
 * stay, and so do child bundles, `*.bundle.js`, which child-bundle.ts keeps current itself).
 */
function prune (dir, outputs) {
  for (const entry of entriesOf(dir)) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) {
      prune(path, outputs)
    } else if (entry.name.endsWith('.bundle.js')) {
      continue
    } else if (((entry.name.endsWith('.js') || entry.name.endsWith('.mjs')) && !outputs.has(path)) || (entry.name.endsWith('.js.map') && !outputs.has(path.slice(0, -'.map'.length)))) {
      try { unlinkSync(path) } catch (err) {
        if (err.code !== 'ENOENT') throw err
      }
    }
  }
}

/** Transpiles every source file whose output is missing or was made from other text; removes outputs of deleted sources. */
export function refresh () {
  const outputs = new Set()
  for (const tree of TREES) walk(join(ROOT, tree), outputs)
  for (const tree of TREES) prune(join(JS_ROOT, tree), outputs)
}
