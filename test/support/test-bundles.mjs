// The suite's test files, bundled by esbuild before `npm test` runs them.
//
// Under the test loader (ts-loader.mjs) a test process spends about 0.6 s of CPU before its first
// test, most of it importing the library's ~200 modules one by one through the loader's hooks; with
// nearly 400 test files that is a tenth of the suite's CPU time on a two-core machine. The same
// process run from a bundle spends about half that. So `npm test` builds every test file it is
// given in one esbuild run (code shared between them split into chunks, packages left external)
// and runs the bundles, still with the loader (a TypeScript module named at run time, such as a
// driver file a test writes, loads as before).
//
// Every module in a bundle sees the `import.meta` values of its source, as under the loader, so a
// path a test or the library builds from them (fixtures, child scripts, the native addon) is the
// same. Stack traces show the sources' lines (source maps, as under the loader).
//
// Usage: node test/support/test-bundles.mjs [--outdir=DIR] <test files...> -- <node arguments...>
// builds the bundles into DIR (default .test-js/bundles; emptied first; it must lie in the
// repository, where node_modules is found) and runs `node <node arguments> <bundles>`. A test file
// outside the repository is run as it is. Running one test file by hand still goes through the
// loader, with no build.

import { spawn } from 'node:child_process'
import { readFile, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { isAbsolute, join, relative, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { importMetaPlugin } from './import-meta-plugin.mjs'
import { ROOT, JS_ROOT } from './transpile.mjs'

const esbuild = createRequire(import.meta.url)('esbuild')

/** Whether `path` (absolute) lies inside the repository. */
function inRepository (path) {
  const rel = relative(ROOT, path)
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel)
}

/**
 * Builds the bundles of `files` (paths of test files) into `outdir`; returns the path to run for
 * each, in order (a file outside the repository: itself).
 */
export async function buildTestBundles (files, outdir = join(JS_ROOT, 'bundles')) {
  const out = resolve(outdir)
  if (!inRepository(out)) throw new Error(`test-bundles: the output directory ${out} must lie inside the repository (${ROOT}), where the bundles find node_modules`)
  const paths = files.map((file) => resolve(file))
  const entries = paths.filter(inRepository)
  const { compilerOptions } = JSON.parse(await readFile(join(ROOT, 'tsconfig.json'), 'utf8'))
  const tsconfigRaw = { compilerOptions }
  await rm(out, { recursive: true, force: true })
  if (entries.length === 0) return paths
  await esbuild.build({
    entryPoints: entries,
    outdir: out,
    outbase: ROOT,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'es2022',
    packages: 'external',
    sourcemap: 'linked',
    sourcesContent: false,
    logLevel: 'warning',
    tsconfigRaw,
    // Every module keeps its source's import.meta, as under the loader.
    plugins: [importMetaPlugin(esbuild, { tsconfigRaw, metaPathOf: (path) => path, sourcemap: true })]
  })
  return paths.map((path) => inRepository(path) ? join(out, relative(ROOT, path)).replace(/\.[cm]?ts$/, '.js') : path)
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const args = process.argv.slice(2)
  const outdir = args[0]?.startsWith('--outdir=') === true ? args.shift().slice('--outdir='.length) : undefined
  const split = args.indexOf('--')
  if (split < 1) {
    process.stderr.write('usage: node test/support/test-bundles.mjs [--outdir=DIR] <test files...> -- <node arguments...>\n')
    process.exit(2)
  }
  const started = Date.now()
  const bundles = await buildTestBundles(args.slice(0, split), outdir)
  process.stderr.write(`test-bundles: ${bundles.length} test files bundled in ${Date.now() - started} ms\n`)
  const runner = spawn(process.execPath, [...args.slice(split + 1), ...bundles.map((bundle) => relative(process.cwd(), bundle))], { stdio: 'inherit' })
  const forward = (signal) => { runner.kill(signal) }
  process.on('SIGINT', forward)
  process.on('SIGTERM', forward)
  runner.once('close', (code, signal) => { process.exit(signal !== null ? 1 : code ?? 1) })
}
