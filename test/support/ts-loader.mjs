// The test processes' TypeScript loader: `node --import ./test/support/ts-loader.mjs ...`.
//
// tsx costs each process about 0.4 s of CPU before its first line runs (its hooks and cache on every
// module); with nearly 300 test files and the children they start, that was a tenth of the suite.
// This loader hands node the outputs of test/support/transpile.mjs (esbuild, the transform tsx
// applies, kept in `.test-js/` and made again when a source changes), under the sources' own URLs,
// so `import.meta.url` and every path a test builds from it stay as they are. Stack traces show the
// sources' lines (source maps are on, as under tsx). TypeScript outside the repository's trees (a
// driver module a test writes to a temporary directory) is transpiled on the fly.
//
// What it does not do that tsx does: CommonJS `require()` of TypeScript, extensionless imports and
// tsconfig `paths`. The repository uses none of them (imports name their `.js` file).

import { register } from 'node:module'

process.setSourceMapsEnabled(true)
register(new URL('./ts-loader-hooks.mjs', import.meta.url))
