// Types of transpile.mjs (plain JavaScript, as the test loader imports it before TypeScript can load).

/** The repository. */
export const ROOT: string
/** The transpiled tree, `.test-js/` in the repository. */
export const JS_ROOT: string
/** The directories whose sources are transpiled. */
export const TREES: readonly string[]
/** Whether `path` is a TypeScript source of the transpiled trees. */
export function inTrees (path: string): boolean
/** Where the output of `source` goes. */
export function outputOf (source: string): string
/** Brings the output of `source` up to date: its path, and its text when this call made it. */
export function transpile (source: string): { output: string, code: string | undefined }
/** Transpiles a TypeScript file outside the trees (not kept), with its source map inline. */
export function transpileLoose (source: string): string
/** Brings every output up to date and removes those of deleted sources. */
export function refresh (): void
