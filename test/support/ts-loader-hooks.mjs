// Module hooks of the test loader (see ts-loader.mjs); they run on node's loader thread.

import { existsSync, readFileSync } from 'node:fs'
import { dirname, relative, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import { inTrees, transpile, transpileLoose } from './transpile.mjs'

const TS = /\.[cm]?ts$/

/**
 * A relative or absolute import of `x.js` means `x.ts` when that exists: looked for first from a
 * TypeScript module, and from anything else (a script given with -e, JavaScript) when `x.js` is not
 * there.
 */
export async function resolve (specifier, context, next) {
  const parent = context.parentURL
  if (parent === undefined || !parent.startsWith('file:') || !specifier.endsWith('.js') ||
      !(specifier.startsWith('./') || specifier.startsWith('../') || specifier.startsWith('/') || specifier.startsWith('file:'))) {
    return await next(specifier, context)
  }
  const typescript = new URL(`${specifier.slice(0, -3)}.ts`, parent)
  if (TS.test(parent)) {
    if (existsSync(typescript)) return { url: typescript.href, format: 'module', shortCircuit: true }
    return await next(specifier, context)
  }
  try {
    return await next(specifier, context)
  } catch (err) {
    if (err?.code === 'ERR_MODULE_NOT_FOUND' && existsSync(typescript)) return { url: typescript.href, format: 'module', shortCircuit: true }
    throw err
  }
}

export async function load (url, context, next) {
  if (url.startsWith('file:') && TS.test(new URL(url).pathname)) {
    const path = fileURLToPath(url)
    if (inTrees(path)) {
      const { output, code } = transpile(path)
      const text = code ?? readFileSync(output, 'utf8')
      // The source map lies beside the output, not beside the source this URL names. Node takes
      // only a path relative to the module's URL (an absolute file: URL is ignored).
      const map = relative(dirname(path), `${output}.map`).split(sep).join('/')
      const source = text.replace(/\n\/\/# sourceMappingURL=\S+\n/, () => `\n//# sourceMappingURL=${map}\n`)
      return { format: 'module', source, shortCircuit: true }
    }
    return { format: 'module', source: transpileLoose(path), shortCircuit: true }
  }
  return await next(url, context)
}
