// The esbuild plugin both test bundlers use (child-bundle.ts for child scripts, test-bundles.mjs for
// test files): every module is transformed on its own with its `import.meta` values written in, so a
// bundle's modules keep telling where they lie; `metaPathOf(path)` says which path that is for the
// module at `path` (undefined: leave `import.meta` as it is). `onRead` sees each text read.
// Plain JavaScript: test-bundles.mjs runs before any TypeScript loader.

import { readFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import { pathToFileURL } from 'node:url'

export function importMetaPlugin (esbuild, { tsconfigRaw, metaPathOf, sourcemap, onRead }) {
  return {
    name: 'import-meta',
    setup (build) {
      build.onLoad({ filter: /\.(ts|mjs|js)$/ }, async ({ path }) => {
        const text = await readFile(path, 'utf8')
        onRead?.(path, text)
        const loader = path.endsWith('.ts') ? 'ts' : 'js'
        const metaPath = metaPathOf(path)
        if (metaPath === undefined) return { contents: text, loader, resolveDir: dirname(path) }
        const define = {
          'import.meta.url': JSON.stringify(pathToFileURL(metaPath).href),
          'import.meta.filename': JSON.stringify(metaPath),
          'import.meta.dirname': JSON.stringify(dirname(metaPath))
        }
        const { code } = await esbuild.transform(text, { loader, format: 'esm', target: 'es2022', define, tsconfigRaw, sourcefile: path, ...(sourcemap ? { sourcemap: 'inline', sourcesContent: false } : {}) })
        return { contents: code, loader: 'js', resolveDir: dirname(path) }
      })
    }
  }
}
