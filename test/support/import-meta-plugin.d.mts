/** See import-meta-plugin.mjs. */
export function importMetaPlugin (esbuild: unknown, options: {
  tsconfigRaw: object
  metaPathOf: (path: string) => string | undefined
  sourcemap?: boolean
  onRead?: (path: string, text: string) => void
}): object
