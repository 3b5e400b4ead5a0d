// A driver module for test/h56-custom-drivers.test.ts, loaded by the daemon from [drivers] modules:
// a backup target and a key provider whose options carry secrets, at the top level and nested, so
// the test can check what `daemon config` (GET /v1/config) shows of them.

import { registerDriver, type KeyProvider } from '../../src/index.js'
import { DirectoryBackupTarget } from '../../backends/directory/index.js'

registerDriver<'backupTarget', { path: string, accessToken?: string, auth?: Record<string, unknown>, endpoints?: unknown[] }>({
  kind: 'backupTarget',
  name: 'h56-vault-dir',
  description: 'a directory target whose options hold credentials',
  options: {
    path: { type: 'string', required: true },
    accessToken: { type: 'string' },
    auth: { type: 'object' },
    endpoints: { type: 'array' }
  },
  create: (options) => new DirectoryBackupTarget({ path: options.path })
})

registerDriver<'keyProvider', { region: string, keyId: string }>({
  kind: 'keyProvider',
  name: 'h56-kms',
  options: { region: { type: 'string', required: true }, keyId: { type: 'string', required: true } },
  create: (options): KeyProvider => ({
    name: 'h56-kms',
    keyId: options.keyId,
    // Never asked to wrap in the test (no encrypted volume is made); an identity keeps it honest if it were.
    wrap: async (dek) => dek.slice(),
    unwrap: async (wrapped) => wrapped.slice()
  })
})
