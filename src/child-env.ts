// The environment handed to programs GalleonFS runs (KMS commands, fusermount): this process's,
// without GalleonFS's own secrets, which none of them needs.

/** Environment variables that hold GalleonFS secrets. */
export const SECRET_VARIABLES: readonly string[] = ['GALLEONFS_CLUSTER_SECRET', 'GALLEONFS_PASSPHRASE', 'GALLEONFS_TOKEN', 'GALLEONFS_ETCD_PASSWORD']

/** `env` (default: this process's environment) without the secret variables. */
export function childEnvironment (env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const out = { ...env }
  for (const name of SECRET_VARIABLES) delete out[name]
  return out
}
