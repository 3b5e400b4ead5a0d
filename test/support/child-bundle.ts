// Child scripts bundled into one file each, for the tests that start the same child by the hundred
// (the crash tests kill one per trial).
//
// A child run from the transpiled tree (child-script.ts) spends about 0.2 s of CPU importing the
// library's ~200 modules (resolving, reading and compiling each) before its first line; run from
// one bundle of the same code it spends about half that. The bundle is made with esbuild from the
// sources (the transform of child-script.ts's tree), packages left external so native addons and
// lazily imported dependencies load as they do in the tree. It lies beside the script's transpiled
// copy (`<name>.bundle.js`), and every other module in it sees the `import.meta` values of its own
// transpiled copy: so paths built from them resolve as in the tree, and a module that is also a
// child's entry point (runAsChild) does not take the bundle for itself. It is made again when any
// source it holds changed: it ends with a hash of exactly the texts it was built from (read by the
// build's own loader), and a side file lists them, so a check rereads and hashes those files.

import { createHash } from 'node:crypto'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, isAbsolute, join, relative } from 'node:path'
import { ROOT, scriptArgs } from './child-script.js'
import { importMetaPlugin } from './import-meta-plugin.mjs'
import { inTrees, outputOf } from './transpile.mjs'

const STAMP_PREFIX = '\n//# child-bundle='
const bundles = new Map<string, Promise<string>>()

/**
 * The node arguments that run `script` (a .ts file of this repository) from its bundle, brought up
 * to date once per process. The child must not rely on its modules being separate files (a module
 * loaded with import() runs from the bundle too; packages stay external). A script outside the
 * transpiled trees runs as scriptArgs runs it.
 */
export async function bundledScriptArgs (script: string): Promise<string[]> {
  if (!inTrees(script)) return scriptArgs(script)
  let bundle = bundles.get(script)
  if (bundle === undefined) {
    bundle = currentBundle(script)
    bundles.set(script, bundle)
  }
  return [await bundle]
}

interface Esbuild {
  version: string
  build: (options: object) => Promise<{ outputFiles: Array<{ path: string, text: string }> }>
  transform: (text: string, options: object) => Promise<{ code: string }>
}

const esbuild = createRequire(import.meta.url)('esbuild') as Esbuild

async function compilerOptions (): Promise<object> {
  return (JSON.parse(await readFile(join(ROOT, 'tsconfig.json'), 'utf8')) as { compilerOptions: object }).compilerOptions
}

/** Hash of the build settings and of each input (path and text), in path order. */
function stampOf (settings: string, inputs: ReadonlyMap<string, string>): string {
  const hash = createHash('sha256').update(settings)
  for (const path of [...inputs.keys()].sort()) hash.update('\0').update(path).update('\0').update(inputs.get(path) as string)
  return hash.digest('hex')
}

async function currentBundle (script: string): Promise<string> {
  const output = outputOf(script).replace(/\.js$/, '.bundle.js')
  const tsconfigRaw = { compilerOptions: await compilerOptions() }
  const settings = `esbuild ${esbuild.version} ${JSON.stringify(tsconfigRaw)} esm es2022 bundle packages=external import.meta=tree`
  if (await isCurrent(output, settings)) return output
  const inputs = new Map<string, string>()
  const result = await esbuild.build({
    entryPoints: [script],
    bundle: true,
    format: 'esm',
    platform: 'node',
    target: 'es2022',
    packages: 'external',
    write: false,
    outfile: output,
    tsconfigRaw,
    // Every source is read here, so the stamp is of exactly the text compiled. The script keeps its
    // own import.meta (the bundle's); every other module sees its transpiled copy's.
    plugins: [importMetaPlugin(esbuild, {
      tsconfigRaw,
      metaPathOf: (path) => path === script ? undefined : outputOf(path),
      onRead: (path, text) => { inputs.set(relative(ROOT, path), text) }
    })]
  })
  const code = result.outputFiles[0]?.text
  if (code === undefined) throw new Error(`esbuild made no bundle of ${script}`)
  await mkdir(dirname(output), { recursive: true })
  // Each written under a temporary name and renamed, so processes doing this at once leave whole files.
  const temporary = `${output}.${process.pid}.tmp`
  await writeFile(temporary, `${code}${STAMP_PREFIX}${stampOf(settings, inputs)}\n`)
  await rename(temporary, output)
  await writeFile(`${output}.inputs.${process.pid}.tmp`, JSON.stringify([...inputs.keys()]))
  await rename(`${output}.inputs.${process.pid}.tmp`, `${output}.inputs`)
  return output
}

/** Whether the bundle at `output` was built from the current text of every file it holds. */
async function isCurrent (output: string, settings: string): Promise<boolean> {
  let code: string, listed: string[]
  try {
    code = await readFile(output, 'utf8')
    listed = JSON.parse(await readFile(`${output}.inputs`, 'utf8')) as string[]
  } catch {
    return false
  }
  const inputs = new Map<string, string>()
  for (const path of listed) {
    if (isAbsolute(path) || path.startsWith('..')) return false
    try { inputs.set(path, await readFile(join(ROOT, path), 'utf8')) } catch { return false }
  }
  return code.endsWith(`${STAMP_PREFIX}${stampOf(settings, inputs)}\n`)
}
