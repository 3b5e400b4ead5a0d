// README "Custom drivers": the claims no other test checked (test/registry.test.ts covers the
// registry's refusals, options checks, isAvailable(), open() by name and the daemon's [drivers]).

import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { withTempDir } from './support/temp-dir.js'
import { BackupStrategy, GalleonFS, registerDriver, unregisterDriver, type BackupTarget, type DriverContext, type MountDriver } from '../src/index.js'
import { DirectoryBackupTarget } from '../backends/directory/index.js'
import { FileBlockStore } from '../backends/file/index.js'
import { startDaemonProcess } from './support/daemon.js'

const SECRET_DRIVERS = join(import.meta.dirname, 'support', 'h56-secret-drivers.ts')

async function withDir<T> (task: (dir: string) => Promise<T>): Promise<T> {
  return await withTempDir('h56-drivers-', task)
}

describe('README Custom drivers', () => {
  it('create() gets the options and a context with the instance\'s storagePath and inMemory; a registered backup target is handed over closed, opened by GalleonFS before use and closed with the instance', async () => {
    await withDir(async (dir) => {
      const contexts: DriverContext[] = []
      registerDriver<'blockStore', { location?: string }>({
        kind: 'blockStore',
        name: 'h56-context-file',
        options: { location: { type: 'string' } },
        create: (options, context) => {
          contexts.push(context)
          return new FileBlockStore({ location: options.location ?? join(context.storagePath as string, 'h56-blocks') })
        }
      })
      // A target that refuses every call made before open() or after close(), and records them.
      const calls: string[] = []
      registerDriver<'backupTarget', { path: string }>({
        kind: 'backupTarget',
        name: 'h56-strict-target',
        options: { path: { type: 'string', required: true } },
        create: (options): BackupTarget => {
          const target = new DirectoryBackupTarget({ path: options.path })
          let open = false
          return new Proxy(target, {
            get (object, property, receiver) {
              const value = Reflect.get(object, property, receiver) as unknown
              if (typeof value !== 'function') return value
              return (...args: unknown[]) => {
                calls.push(String(property))
                if (property === 'open') open = true
                else if (!open) throw new Error(`${String(property)}() called on a backup target that is not open`)
                if (property === 'close') open = false
                return (value as (...a: unknown[]) => unknown).apply(object, args)
              }
            }
          })
        }
      })
      try {
        const storagePath = join(dir, 'storage')
        const g = await GalleonFS.open({ storagePath, backend: 'h56-context-file', backupTarget: { driver: 'h56-strict-target', options: { path: join(dir, 'backups') } } })
        try {
          assert.equal(contexts.length, 1)
          const { reportBackgroundError, ...facts } = contexts[0] as DriverContext
          assert.deepEqual(facts, { storagePath, inMemory: false }, 'the context of a storage-path instance')
          assert.equal(typeof reportBackgroundError, 'function', 'the context takes background errors')
          assert.ok(Object.isFrozen(contexts[0]))
          const vol = await g.createVolume({ name: 'v', sizeBytes: '64K' })
          await g.writeBlock(vol, 1, new Uint8Array(4096).fill(5))
          const backup = await g.createBackup(vol, { strategy: BackupStrategy.Full })
          assert.equal((await g.verifyBackup(backup.id)).ok, true)
        } finally {
          await g.close()
        }
        assert.equal(calls[0], 'open', `the first call on the target is open(): ${calls.join(' ')}`)
        assert.equal(calls.at(-1), 'close', `the last call on the target is close(): ${calls.join(' ')}`)
        assert.ok(calls.includes('putManifest'))
        const m = await GalleonFS.open({ inMemory: true, backend: 'h56-context-file', backendOptions: { location: join(dir, 'elsewhere') } })
        await m.close()
        assert.deepEqual({ ...contexts[1], reportBackgroundError: undefined }, { inMemory: true, reportBackgroundError: undefined }, 'the context of an in-memory instance has no storagePath')
      } finally {
        unregisterDriver('blockStore', 'h56-context-file')
        unregisterDriver('backupTarget', 'h56-strict-target')
      }
    })
  })

  it('mount: { driver, options } creates the registered mount driver with those options (checked first)', async () => {
    const created: Array<Record<string, unknown>> = []
    registerDriver<'mountDriver', { prefix: string }>({
      kind: 'mountDriver',
      name: 'h56-prefixed',
      options: { prefix: { type: 'string', required: true } },
      create: (options): MountDriver => {
        created.push({ ...options })
        return { name: 'h56-prefixed', mount: async () => {}, unmount: async () => {} }
      }
    })
    try {
      await assert.rejects(GalleonFS.open({ inMemory: true, mount: { driver: 'h56-prefixed', options: { prefix: 7 } } }), (err: { code?: string }) => err.code === 'INVALID_ARGUMENT')
      assert.equal(created.length, 0, 'refused before create() ran')
      const g = await GalleonFS.open({ inMemory: true, mount: { driver: 'h56-prefixed', options: { prefix: '/srv' } } })
      try {
        assert.equal(g.mounts.driver, 'h56-prefixed')
        assert.deepEqual(created, [{ prefix: '/srv' }])
      } finally {
        await g.close()
      }
    } finally {
      unregisterDriver('mountDriver', 'h56-prefixed')
    }
  })

  // README: "`daemon config` shows driver options except values whose names suggest secrets, and no
  // key provider options". A secret one level down (credentials in an object or a list, as TOML's
  // inline tables give them) is a value whose name suggests a secret too.
  it('daemon config shows no value whose name suggests a secret, nested ones included, and no key provider options', { timeout: 60_000 }, async () => {
    await withDir(async (dir) => {
      const config = join(dir, 'galleonfs.toml')
      await writeFile(config, [
        '[daemon]',
        `storage_path = ${JSON.stringify(join(dir, 'storage'))}`,
        '',
        '[drivers]',
        `modules = [${JSON.stringify(SECRET_DRIVERS)}]`,
        'backup_target = "h56-vault-dir"',
        `backup_target_options = { path = ${JSON.stringify(join(dir, 'backups'))}, accessToken = "TOP-LEVEL-TOKEN-1", auth = { user = "backup", secretAccessKey = "NESTED-SECRET-2" }, endpoints = [{ url = "https://a.example", password = "LISTED-PASSWORD-3" }] }`,
        '',
        '[security]',
        'key_provider = "h56-kms"',
        'key_provider_options = { region = "eu-west-1", keyId = "KMS-KEY-ID-4" }',
        ''
      ].join('\n'))
      const daemon = await startDaemonProcess(['--config', config, '--ipc-address', '127.0.0.1:0'], { cwd: dir, tsx: true })
      try {
        const token = (await readFile(join(dir, 'storage', 'ipc.token'), 'utf8')).trim()
        const response = await fetch(`http://${daemon.address}/v1/config`, { headers: { authorization: `Bearer ${token}` } })
        assert.equal(response.status, 200)
        const text = await response.text()
        const shown = JSON.parse(text) as { backupTargetOptions?: Record<string, unknown>, keyProviderOptions?: Record<string, unknown> }
        // What the README says is shown: options whose names suggest nothing secret.
        assert.equal(shown.backupTargetOptions?.path, join(dir, 'backups'))
        assert.equal((shown.backupTargetOptions?.auth as Record<string, unknown> | undefined)?.user, 'backup', 'a harmless nested value is shown')
        for (const secret of ['TOP-LEVEL-TOKEN-1', 'NESTED-SECRET-2', 'LISTED-PASSWORD-3', 'KMS-KEY-ID-4', 'eu-west-1']) {
          assert.ok(!text.includes(secret), `GET /v1/config shows ${secret}: ${JSON.stringify(shown.backupTargetOptions)} ${JSON.stringify(shown.keyProviderOptions)}`)
        }
      } finally {
        daemon.child.kill('SIGTERM')
        assert.equal(await daemon.exited, 0)
      }
    })
  })
})
