// The driver registry: the worked example (examples/custom-block-store) against the shared
// block-store conformance suite, registration rules, GalleonFS.open() with registered drivers by
// name, and the daemon loading a driver module named in its configuration file.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto'
import { appendFile, mkdir, mkdtemp, readFile, readdir, rm, stat, unlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  BackupStrategy, DirectoryBackupTarget, GalleonError, GalleonFS, WriteConcern, createDriver, getDriver, listDrivers, registerDriver, unregisterDriver,
  type BackupTarget, type DriverDescriptor, type KeyProvider, type MountDriver, type MountedVolume
} from '../src/index.js'
import { MemoryBlockStore } from '../backends/memory/index.js'
import { FilePerBlockStore, filePerBlockDriver } from '../examples/custom-block-store/index.js'
import { ConfigError, merge, readConfigFile } from '../examples/daemon-config.js'
import { addr, blockStoreSuite, bytesOf, put } from './conformance/index.js'
import { ENTRY, ROOT, startDaemonProcess } from './support/daemon.js'
import { scriptArgs } from './support/child-script.js'

const EXAMPLE_MODULE = join(ROOT, 'examples', 'custom-block-store', 'index.ts')

let root: string
before(async () => { root = await mkdtemp(join(tmpdir(), 'galleon-registry-')) })
after(async () => { await rm(root, { recursive: true, force: true }) })

// The example, created through the registry by its name, runs the shared suite unchanged.
blockStoreSuite({
  name: 'file-per-block (examples/custom-block-store)',
  factory: async (location) => await createDriver('blockStore', 'file-per-block', { location }),
  supports: { persistent: true, durableSync: true, atomicBatch: true, reclaimsSpace: true }
})

const codeOf = (code: string, pattern?: RegExp) => (err: Error & { code?: string }): boolean => {
  assert.equal(err.code, code, err.message)
  if (pattern !== undefined) assert.match(err.message, pattern)
  return true
}

describe('file-per-block store: journal replay', () => {
  it('rewrites from its journal the block files a crash lost, and ignores a torn journal tail', async () => {
    const location = join(root, 'replay')
    const crashed = new FilePerBlockStore({ location })
    await crashed.open()
    await crashed.batch([put(addr(1, 0), bytesOf(4096, 1)), put(addr(1, 1), bytesOf(100, 2))])
    await crashed.batch([put(addr(1, 0, 1), bytesOf(4096, 3))])
    // No close (no checkpoint): as after kill -9, with the page cache's copy of one file lost.
    const lost = join(location, '00000001', '00000000000', '00000000000000-00000000000000')
    await stat(lost)
    await unlink(lost)
    // A record cut short at the end of the journal: a write the crash interrupted.
    await appendFile(join(location, 'journal.log'), Buffer.from([0x47, 0x42, 0x4a, 0x31, 0xff, 0, 0, 0, 1, 2]))
    const reopened = new FilePerBlockStore({ location })
    await reopened.open()
    try {
      assert.deepEqual(await reopened.get(addr(1, 0)), bytesOf(4096, 1))
      assert.deepEqual(await reopened.get(addr(1, 1)), bytesOf(100, 2))
      assert.deepEqual(await reopened.get(addr(1, 0, 1)), bytesOf(4096, 3))
      assert.deepEqual(await reopened.stats(), { blocks: 3, liveBytes: 8292, storedBytes: 8292, syncs: 0 })
    } finally {
      await reopened.close()
      await crashed.close()
    }
  })
})

/** A key provider for tests: AES-256-GCM under a key derived from a secret, the context authenticated. */
function secretKeyProvider (secret: string): KeyProvider {
  const key = createHash('sha256').update(secret).digest()
  return {
    name: 'test-secret',
    keyId: createHash('sha256').update(key).digest('hex').slice(0, 16),
    wrap: async (dek, context) => {
      const iv = randomBytes(12)
      const cipher = createCipheriv('aes-256-gcm', key, iv).setAAD(Buffer.from(context))
      return new Uint8Array(Buffer.concat([iv, cipher.update(dek), cipher.final(), cipher.getAuthTag()]))
    },
    unwrap: async (wrapped, context) => {
      const bytes = Buffer.from(wrapped)
      const decipher = createDecipheriv('aes-256-gcm', key, bytes.subarray(0, 12)).setAAD(Buffer.from(context))
      decipher.setAuthTag(bytes.subarray(bytes.byteLength - 16))
      return new Uint8Array(Buffer.concat([decipher.update(bytes.subarray(12, bytes.byteLength - 16)), decipher.final()]))
    }
  }
}

describe('driver registry', () => {
  it('lists the built-in drivers of every kind, and the example registered by importing it', () => {
    const byKind = (kind: Parameters<typeof listDrivers>[0]): string[] => listDrivers(kind).map((driver) => driver.name)
    assert.deepEqual(byKind('blockStore'), ['memory', 'level', 'file', 'file-per-block'])
    assert.deepEqual(byKind('backupTarget'), ['directory'])
    assert.deepEqual(byKind('keyProvider'), ['internal', 'passphrase', 'command', 'http', 'external'])
    assert.deepEqual(byKind('mountDriver'), ['virtual', 'fuse'])
    assert.equal(listDrivers().length, 12)
    assert.ok(listDrivers().filter((driver) => driver.name !== 'file-per-block').every((driver) => driver.builtIn))
    const example = getDriver('blockStore', 'file-per-block')
    assert.equal(example?.builtIn, false)
    assert.equal(example?.create, filePerBlockDriver.create)
    assert.equal(getDriver('blockStore', 'directory'), undefined, 'names are per kind')
    assert.equal(getDriver('keyProvider', 'nope'), undefined)
  })

  it('registers, finds, lists and unregisters a driver; the name is free again afterwards', async () => {
    const descriptor: DriverDescriptor<'blockStore'> = { kind: 'blockStore', name: 'scratch', description: 'a Map', create: () => new MemoryBlockStore() }
    const registered = registerDriver(descriptor)
    try {
      assert.equal(registered.builtIn, false)
      assert.equal(getDriver('blockStore', 'scratch'), registered)
      assert.ok(Object.isFrozen(registered))
      assert.deepEqual(listDrivers('blockStore').map((driver) => driver.name).at(-1), 'scratch')
      const store = await createDriver('blockStore', 'scratch')
      assert.ok(store instanceof MemoryBlockStore)
      assert.throws(() => registerDriver(descriptor), codeOf('INVALID_ARGUMENT', /'scratch' is registered already.*unregisterDriver/))
    } finally {
      assert.equal(unregisterDriver('blockStore', 'scratch'), true)
    }
    assert.equal(unregisterDriver('blockStore', 'scratch'), false)
    assert.equal(getDriver('blockStore', 'scratch'), undefined)
    await assert.rejects(createDriver('blockStore', 'scratch'), codeOf('INVALID_ARGUMENT', /not a registered block store; registered block stores: memory, level, file, file-per-block/))
    registerDriver(descriptor)
    assert.equal(unregisterDriver('blockStore', 'scratch'), true)
  })

  it('refuses to replace or unregister a built-in driver', () => {
    for (const [kind, name] of [['blockStore', 'file'], ['backupTarget', 'directory'], ['keyProvider', 'internal'], ['mountDriver', 'fuse']] as const) {
      assert.throws(() => registerDriver({ kind, name, create: () => { throw new Error('never') } } as never), codeOf('INVALID_ARGUMENT', /built-in .* cannot be replaced/))
      assert.throws(() => unregisterDriver(kind, name), codeOf('INVALID_ARGUMENT', /built-in/))
      assert.equal(getDriver(kind, name)?.builtIn, true)
    }
  })

  const create = (): MountDriver => ({ name: 'x', mount: async () => {}, unmount: async () => {} })
  const bad: Array<[string, unknown, RegExp]> = [
    ['no descriptor', undefined, /needs a descriptor/],
    ['a string', 'my-store', /needs a descriptor/],
    ['an unknown kind', { kind: 'coordinator', name: 'x', create }, /kind must be one of 'blockStore', 'backupTarget', 'keyProvider', 'mountDriver'/],
    ['no kind', { name: 'x', create }, /kind must be one of/],
    ['an empty name', { kind: 'mountDriver', name: '', create }, /a driver name is 1 to 63 letters/],
    ['a name with a slash', { kind: 'mountDriver', name: 'acme/s3', create }, /a driver name is/],
    ['a name that is not a string', { kind: 'mountDriver', name: 7, create }, /a driver name is/],
    ['create not a function', { kind: 'mountDriver', name: 'x', create: 'new X()' }, /create must be a function/],
    ['no create', { kind: 'mountDriver', name: 'x' }, /create must be a function/],
    ['isAvailable not a function', { kind: 'mountDriver', name: 'x', create, isAvailable: true }, /isAvailable must be a function/],
    ['a misspelt key', { kind: 'mountDriver', name: 'x', create, isAvaliable: () => true }, /unknown descriptor key\(s\) isAvaliable/],
    ['options not an object', { kind: 'mountDriver', name: 'x', create, options: ['path'] }, /options must be an object of option specs/],
    ['an option of an unknown type', { kind: 'mountDriver', name: 'x', create, options: { path: { type: 'text' } } }, /option path: type must be one of/],
    ['an option spec with a wrong key', { kind: 'mountDriver', name: 'x', create, options: { path: { mandatory: true } } }, /unknown key\(s\) mandatory/],
    ['a validator that is not a function', { kind: 'mountDriver', name: 'x', create, options: { path: { validate: /x/ } } }, /validate must be a function/]
  ]
  for (const [what, descriptor, message] of bad) {
    it(`refuses a descriptor with ${what} (INVALID_ARGUMENT), registering nothing`, () => {
      const before = listDrivers().length
      assert.throws(() => registerDriver(descriptor as never), codeOf('INVALID_ARGUMENT', message))
      assert.equal(listDrivers().length, before)
    })
  }

  it('refuses bad arguments to the look-up functions', () => {
    assert.throws(() => listDrivers('tape' as never), codeOf('INVALID_ARGUMENT'))
    assert.throws(() => getDriver('tape' as never, 'x'), codeOf('INVALID_ARGUMENT'))
    assert.throws(() => unregisterDriver('blockStore', ''), codeOf('INVALID_ARGUMENT'))
  })

  it('checks options against the descriptor before create() runs', async () => {
    let created = 0
    registerDriver({
      kind: 'blockStore',
      name: 'checked',
      options: {
        shards: { type: 'number', required: true, description: 'how many Maps', validate: (value) => { if ((value as number) < 1) throw new Error('must be at least 1') } },
        label: { type: ['string', 'boolean'] }
      },
      create: () => { created++; return new MemoryBlockStore() }
    })
    try {
      await assert.rejects(createDriver('blockStore', 'checked', {}), codeOf('INVALID_ARGUMENT', /needs option\(s\) shards \(how many Maps\)/))
      await assert.rejects(createDriver('blockStore', 'checked', { shards: 2, colour: 'red' }), codeOf('INVALID_ARGUMENT', /has no option colour; it accepts shards, label/))
      await assert.rejects(createDriver('blockStore', 'checked', { shards: '2' }), codeOf('INVALID_ARGUMENT', /option shards of block store 'checked' must be a number, got "2"/))
      await assert.rejects(createDriver('blockStore', 'checked', { shards: 2, label: 3 }), codeOf('INVALID_ARGUMENT', /must be a string or a boolean/))
      await assert.rejects(createDriver('blockStore', 'checked', { shards: 0 }), codeOf('INVALID_ARGUMENT', /option shards of block store 'checked': must be at least 1/))
      await assert.rejects(createDriver('blockStore', 'checked', ['shards'] as never), codeOf('INVALID_ARGUMENT', /must be an object/))
      await assert.rejects(createDriver('blockStore', 'memory', { location: '/tmp' }), codeOf('INVALID_ARGUMENT', /has no option location; it takes no options/))
      assert.equal(created, 0)
      assert.ok((await createDriver('blockStore', 'checked', { shards: 2, label: true })) instanceof MemoryBlockStore)
      assert.equal(created, 1)
    } finally {
      unregisterDriver('blockStore', 'checked')
    }
  })

  it('asks isAvailable() only when a driver is created, and refuses an unavailable one with BACKEND_UNAVAILABLE', async () => {
    let asked = 0
    let available = false
    registerDriver({ kind: 'mountDriver', name: 'needs-hardware', description: 'a mount driver for a device this machine lacks', isAvailable: async () => { asked++; return available }, create })
    registerDriver({ kind: 'mountDriver', name: 'broken-probe', isAvailable: () => { throw new Error('probe crashed') }, create })
    try {
      assert.equal(asked, 0, 'registering does not probe')
      await assert.rejects(createDriver('mountDriver', 'needs-hardware'), codeOf('BACKEND_UNAVAILABLE', /mount driver 'needs-hardware' \(a mount driver for a device this machine lacks\) is not available on this machine.*virtual, fuse/))
      await assert.rejects(GalleonFS.open({ inMemory: true, mount: 'needs-hardware' }), codeOf('BACKEND_UNAVAILABLE'))
      await assert.rejects(createDriver('mountDriver', 'broken-probe'), codeOf('BACKEND_UNAVAILABLE', /probe crashed/))
      assert.equal(asked, 2)
      available = true
      assert.equal((await createDriver('mountDriver', 'needs-hardware')).name, 'x')
    } finally {
      unregisterDriver('mountDriver', 'needs-hardware')
      unregisterDriver('mountDriver', 'broken-probe')
    }
  })

  it('reports a create() that fails or returns something else than a driver of its kind', async () => {
    registerDriver({ kind: 'backupTarget', name: 'throws', create: () => { throw new Error('bucket gone') } })
    registerDriver({ kind: 'backupTarget', name: 'half', create: () => ({ name: 'half', open: async () => {} }) as never })
    registerDriver({ kind: 'keyProvider', name: 'refuses', create: () => { throw new GalleonError('INVALID_ARGUMENT', 'region must be set') } })
    try {
      await assert.rejects(createDriver('backupTarget', 'throws'), codeOf('IO_ERROR', /could not create the backup target 'throws': bucket gone/))
      await assert.rejects(createDriver('backupTarget', 'half'), codeOf('INVALID_ARGUMENT', /returned an object without close, hasChunk/))
      await assert.rejects(createDriver('keyProvider', 'refuses'), codeOf('INVALID_ARGUMENT', /^region must be set$/))
    } finally {
      unregisterDriver('backupTarget', 'throws')
      unregisterDriver('backupTarget', 'half')
      unregisterDriver('keyProvider', 'refuses')
    }
  })
})

describe('GalleonFS.open() with registered drivers', () => {
  it('stores volumes in a registered block store by name, and finds them after close and reopen', async () => {
    const storagePath = join(root, 'open-custom')
    const data = randomBytes(3 * 4096)
    let g = await GalleonFS.open({ storagePath, backend: 'file-per-block' })
    try {
      assert.equal(g.backend, 'file-per-block')
      const vol = await g.createVolume({ name: 'custom', sizeBytes: '1M', storageClass: 'fast-local-ssd' })
      await g.write(vol, 8192, data, WriteConcern.WriteDurable)
      await g.createSnapshot(vol, 'before')
      await g.write(vol, 8192, new Uint8Array(4096).fill(9))
    } finally {
      await g.close()
    }
    // The blocks are files of the example's layout in its default place under the storage path.
    const volumes = await readdir(join(storagePath, 'file-per-block'))
    assert.ok(volumes.some((name) => /^[0-9a-f]{8}$/.test(name)), `volume directories in ${volumes.join(', ')}`)
    g = await GalleonFS.open({ storagePath, backend: 'file-per-block' })
    try {
      const read = await g.read('custom', 8192, 3 * 4096)
      assert.deepEqual(read.subarray(0, 4096), new Uint8Array(4096).fill(9))
      assert.deepEqual(read.subarray(4096), new Uint8Array(data.subarray(4096)))
      const clone = await g.cloneVolume({ volume: 'custom', snapshot: 'before' }, 'restored')
      assert.deepEqual(await g.read(clone, 8192, 3 * 4096), new Uint8Array(data))
      assert.deepEqual(await g.read('custom', 0, 8192), new Uint8Array(8192))
    } finally {
      await g.close()
    }
  })

  it('passes backendOptions to the block store, built-in ones included', async () => {
    const storagePath = join(root, 'open-options')
    const location = join(root, 'elsewhere')
    let g = await GalleonFS.open({ storagePath, backend: 'file-per-block', backendOptions: { location, checkpointBytes: 1 << 20 } })
    await g.writeBlock(await g.createVolume({ name: 'v', sizeBytes: '64K', storageClass: 'fast-local-ssd' }), 0, new Uint8Array(4096).fill(4), WriteConcern.WriteDurable)
    await g.close()
    assert.ok((await readdir(location)).includes('journal.log'))
    await assert.rejects(stat(join(storagePath, 'file-per-block')), { code: 'ENOENT' })
    g = await GalleonFS.open({ storagePath, backend: 'file-per-block', backendOptions: { location } })
    assert.deepEqual(await g.readBlock('v', 0), new Uint8Array(4096).fill(4))
    await g.close()
    // A built-in block store takes options too.
    const tuned = join(root, 'open-tuned')
    g = await GalleonFS.open({ storagePath: tuned, backend: 'file', backendOptions: { segmentBytes: 1 << 20, syncWriteMaxBytes: 0, syncReadMaxBytes: 0, spareSegments: 0 } })
    assert.equal(g.backend, 'file')
    await g.createVolume({ name: 'v', sizeBytes: '1M' })
    await g.writeBlock('v', 1, new Uint8Array(4096).fill(6))
    assert.deepEqual(await g.readBlock('v', 1), new Uint8Array(4096).fill(6))
    await g.close()
    assert.ok((await readdir(join(tuned, 'blocks'))).some((name) => name.endsWith('.log')))
  })

  const refused: Array<[string, object, RegExp]> = [
    ['an unknown backend, listing the registered ones', { inMemory: true, backend: 'tape' }, /backend "tape" is not a registered block store; registered block stores: memory, level, file, file-per-block/],
    ['a backend that is not a string', { inMemory: true, backend: 42 }, /backend must be the name of a registered block store \(memory, level, file, file-per-block\)/],
    ['backendOptions without a backend', { inMemory: true, backendOptions: { location: '/tmp/x' } }, /give backend too/],
    ['an option the block store does not take', { inMemory: true, backend: 'file-per-block', backendOptions: { shards: 4 } }, /has no option shards; it accepts location, checkpointBytes/],
    ['an option value the block store refuses', { inMemory: true, backend: 'file-per-block', backendOptions: { checkpointBytes: -1 } }, /checkpointBytes .*must be a positive integer/],
    ['a store that needs a location it was not given', { inMemory: true, backend: 'file-per-block' }, /open with storagePath, or give backendOptions.location/],
    ['an unknown mount driver, listing the registered ones', { inMemory: true, mount: 'nfs' }, /mount "nfs" is not a registered mount driver; registered mount drivers: virtual, fuse/],
    ['an unknown key provider', { inMemory: true, keyProvider: { driver: 'vault' } }, /keyProvider "vault" is not a registered key provider; registered key providers: internal, passphrase, command, http, external/],
    ['an unknown backup target', { inMemory: true, backupTarget: { driver: 's3' } }, /backupTarget "s3" is not a registered backup target; registered backup targets: directory/],
    ['a driver reference with an unknown key', { inMemory: true, backupTarget: { driver: 'directory', options: { path: '/tmp' }, bucket: 'b' } }, /unknown key\(s\) bucket/],
    ['a backup target without its required option', { inMemory: true, backupTarget: { driver: 'directory' } }, /backup target 'directory' needs option\(s\) path/],
    ['a key provider reference and a passphrase', { inMemory: true, keyProvider: { driver: 'internal' }, passphrase: 'long enough' }, /either keyProvider or passphrase/]
  ]
  for (const [what, options, message] of refused) {
    it(`refuses ${what} with INVALID_ARGUMENT`, async () => {
      await assert.rejects(GalleonFS.open(options as never), codeOf('INVALID_ARGUMENT', message))
    })
  }

  it('refuses a non-persistent registered block store under a storage path, and takes it in memory', async () => {
    registerDriver({ kind: 'blockStore', name: 'volatile', create: () => new MemoryBlockStore() })
    try {
      const storagePath = join(root, 'volatile')
      await assert.rejects(GalleonFS.open({ storagePath, backend: 'volatile' }), codeOf('INVALID_ARGUMENT', /'volatile' is not persistent/))
      // Nothing was left open: the storage path opens normally now.
      const g = await GalleonFS.open({ storagePath })
      await g.close()
      const m = await GalleonFS.open({ inMemory: true, backend: 'volatile' })
      try {
        await m.writeBlock(await m.createVolume({ name: 'v', sizeBytes: '64K', storageClass: 'fast-local-ssd' }), 1, new Uint8Array(4096).fill(1))
        assert.deepEqual(await m.readBlock('v', 1), new Uint8Array(4096).fill(1))
      } finally {
        await m.close()
      }
    } finally {
      unregisterDriver('blockStore', 'volatile')
    }
  })

  it('wraps data keys with a registered key provider named with its options', async () => {
    registerDriver<'keyProvider', { secret: string }>({
      kind: 'keyProvider',
      name: 'test-secret',
      options: { secret: { type: 'string', required: true } },
      create: (options) => secretKeyProvider(options.secret)
    })
    try {
      const storagePath = join(root, 'keys')
      const secret = new Uint8Array(4096).fill(0x5e)
      let g = await GalleonFS.open({ storagePath, keyProvider: { driver: 'test-secret', options: { secret: 'first' } } })
      await g.writeBlock(await g.createVolume({ name: 'sealed', sizeBytes: '64K', storageClass: 'encrypted-storage', replicas: 1 }), 0, secret, WriteConcern.WriteDurable)
      assert.equal((await g.getVolumeEncryption('sealed')).provider, 'test-secret')
      await g.close()
      await assert.rejects(stat(join(storagePath, 'master.key')), { code: 'ENOENT' })
      g = await GalleonFS.open({ storagePath, keyProvider: { driver: 'test-secret', options: { secret: 'first' } } })
      assert.deepEqual(await g.readBlock('sealed', 0), secret)
      await g.close()
      g = await GalleonFS.open({ storagePath, keyProvider: { driver: 'test-secret', options: { secret: 'second' } } })
      try {
        await assert.rejects(g.readBlock('sealed', 0), codeOf('DECRYPTION_FAILED'))
      } finally {
        await g.close()
      }
    } finally {
      unregisterDriver('keyProvider', 'test-secret')
    }
  })

  it('takes the built-in passphrase key provider by name, as the passphrase option', async () => {
    const storagePath = join(root, 'passphrase')
    let g = await GalleonFS.open({ storagePath, keyProvider: { driver: 'passphrase', options: { passphrase: 'correct horse' } } })
    await g.writeBlock(await g.createVolume({ name: 'sealed', sizeBytes: '64K', storageClass: 'encrypted-storage', replicas: 1 }), 0, new Uint8Array(4096).fill(3))
    await g.close()
    await assert.rejects(GalleonFS.open({ storagePath, keyProvider: { driver: 'passphrase', options: { passphrase: 'wrong horse' } } }), codeOf('DECRYPTION_FAILED', /wrong passphrase/))
    g = await GalleonFS.open({ storagePath, passphrase: 'correct horse' })
    try {
      assert.deepEqual(await g.readBlock('sealed', 0), new Uint8Array(4096).fill(3))
      assert.equal((await g.getVolumeEncryption('sealed')).provider, 'passphrase')
    } finally {
      await g.close()
    }
  })

  it('backs up to a registered backup target by default, and closes it with the instance', async () => {
    const created: Array<{ target: DirectoryBackupTarget, closed: number }> = []
    registerDriver<'backupTarget', { path: string }>({
      kind: 'backupTarget',
      name: 'tracked-directory',
      options: { path: { type: 'string', required: true } },
      create: (options): BackupTarget => {
        const entry = { target: new DirectoryBackupTarget({ path: options.path }), closed: 0 }
        const close = entry.target.close.bind(entry.target)
        entry.target.close = async () => { entry.closed++; await close() }
        created.push(entry)
        return entry.target
      }
    })
    try {
      const path = join(root, 'tracked-backups')
      const g = await GalleonFS.open({ inMemory: true, backupTarget: { driver: 'tracked-directory', options: { path } } })
      try {
        const vol = await g.createVolume({ name: 'src', sizeBytes: '64K', storageClass: 'fast-local-ssd' })
        await g.writeBlock(vol, 2, new Uint8Array(4096).fill(2))
        const backup = await g.createBackup(vol, { strategy: BackupStrategy.Full })
        assert.deepEqual((await g.listBackups()).map((b) => b.id), [backup.id])
        assert.ok((await readdir(path, { recursive: true })).some((name) => name.includes(backup.id)), 'the manifest is in the directory')
        const restored = await g.restoreBackup(backup.id, { name: 'copy' })
        assert.deepEqual(await g.readBlock(restored, 2), new Uint8Array(4096).fill(2))
        assert.equal(created.length, 1)
        assert.equal(created[0]?.closed, 0)
      } finally {
        await g.close()
      }
      assert.equal(created[0]?.closed, 1)
      // The built-in directory target by name works as a path does.
      const d = await GalleonFS.open({ inMemory: true, backupTarget: { driver: 'directory', options: { path: join(root, 'dir-backups') } } })
      try {
        const backup = await d.createBackup(await d.createVolume({ name: 'x', sizeBytes: '64K', storageClass: 'fast-local-ssd' }), { strategy: BackupStrategy.Full })
        assert.equal((await d.listBackups(undefined, { target: join(root, 'dir-backups') })).length, 1)
        assert.equal(backup.target, join(root, 'dir-backups'))
      } finally {
        await d.close()
      }
    } finally {
      unregisterDriver('backupTarget', 'tracked-directory')
    }
  })

  it('mounts through a registered mount driver named by a string', async () => {
    const mounted = new Map<string, MountedVolume>()
    registerDriver({
      kind: 'mountDriver',
      name: 'in-process',
      create: (): MountDriver => ({
        name: 'in-process',
        mount: async (volume) => { mounted.set(volume.path, volume) },
        unmount: async (path) => { mounted.delete(path) }
      })
    })
    try {
      const g = await GalleonFS.open({ inMemory: true, mount: 'in-process' })
      try {
        assert.equal(g.mounts.driver, 'in-process')
        await g.createVolume({ name: 'shown', sizeBytes: '64K', storageClass: 'fast-local-ssd' })
        const path = join(root, 'mnt', 'shown')
        await g.mounts.mountVolume('shown', path)
        const volume = mounted.get(path)
        assert.ok(volume !== undefined)
        // What the driver writes through the mounted volume is in the volume.
        await volume.data.write(4096, new Uint8Array(10).fill(7))
        await volume.data.flush()
        assert.deepEqual(await g.read('shown', 4096, 10), new Uint8Array(10).fill(7))
        assert.match(volume.readme(), /shown/)
        await g.mounts.unmountVolume(path)
        assert.equal(mounted.size, 0)
      } finally {
        await g.close()
      }
    } finally {
      unregisterDriver('mountDriver', 'in-process')
    }
  })
})

describe('daemon configuration: [drivers]', () => {
  it('reads the driver settings, resolving module paths against the configuration file', async () => {
    const dir = join(root, 'conf')
    await mkdir(dir, { recursive: true })
    const path = join(dir, 'galleonfs.toml')
    await writeFile(path, [
      '[drivers]',
      'modules = ["./drivers/store.js", "/opt/galleonfs/kms.js", "galleonfs-s3"]',
      'block_store = "file-per-block"',
      'block_store_options = { location = "/srv/blocks", checkpointBytes = 1048576 }',
      'backup_target = "directory"',
      'backup_target_options = { path = "/backups" }',
      '[security]',
      'key_provider = "vault"',
      'key_provider_options = { token = "s3cr3t" }',
      ''
    ].join('\n'))
    const { settings } = await readConfigFile(path)
    assert.deepEqual(settings.driverModules, [join(dir, 'drivers', 'store.js'), '/opt/galleonfs/kms.js', 'galleonfs-s3'])
    assert.equal(settings.blockStore, 'file-per-block')
    assert.deepEqual(settings.blockStoreOptions, { location: '/srv/blocks', checkpointBytes: 1048576 })
    assert.deepEqual(settings.backupTargetOptions, { path: '/backups' })
    const config = merge(settings)
    assert.equal(config.keyProvider, 'vault')
    assert.deepEqual(config.keyProviderOptions, { token: 's3cr3t' })
  })

  const wrong: Array<[string, string, RegExp]> = [
    ['a module list that is not strings', '[drivers]\nmodules = [1]\n', /modules in \[drivers\] must be a list of module paths/],
    ['a driver name with a slash', '[drivers]\nblock_store = "acme/s3"\n', /block_store in \[drivers\] must be the name of a registered driver/],
    ['options that are not a table', '[drivers]\nblock_store = "file"\nblock_store_options = "fast"\n', /block_store_options in \[drivers\] must be a table/],
    ['an unknown key', '[drivers]\nstore = "file"\n', /unknown key store in \[drivers\]/]
  ]
  for (const [what, text, message] of wrong) {
    it(`refuses ${what} with a ConfigError`, async () => {
      const path = join(root, `wrong-${what.replace(/\W+/g, '-')}.toml`)
      await writeFile(path, text)
      await assert.rejects(readConfigFile(path), (err: Error) => err instanceof ConfigError && message.test(err.message))
    })
  }

  it('refuses settings that do not go together', () => {
    assert.throws(() => merge({ blockStoreOptions: { location: '/x' } }), (err: Error) => err instanceof ConfigError && /block_store_options in \[drivers\] needs block_store/.test(err.message))
    assert.throws(() => merge({ mountDriver: 'in-process' }), (err: Error) => err instanceof ConfigError && /set mount_point/.test(err.message))
    assert.throws(() => merge({ keyProvider: 'passphrase', keyProviderOptions: { passphrase: 'x' } }), (err: Error) => err instanceof ConfigError && /takes its settings from the other keys of \[security\]/.test(err.message))
  })
})

/** Runs `galleonfs -d --config <file>` expecting it to refuse to start; resolves to its exit code and log. */
async function refusedDaemon (config: string): Promise<{ code: number | null, log: string }> {
  const child = spawn(process.execPath, [...scriptArgs(ENTRY, { tsx: true }), '-d', '--config', config, '--ipc-address', '127.0.0.1:0'], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] })
  let log = ''
  child.stderr.on('data', (chunk: Buffer) => { log += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  // The log's JSON lines, as the messages they carry.
  return { code, log: log.split('\n').filter((line) => line.startsWith('{')).map((line) => (JSON.parse(line) as { message: string }).message).join('\n') }
}

describe('daemon with a driver module', () => {
  it('loads the module named in its configuration, stores volumes in the block store it registers, and keeps them across a restart', async () => {
    const storage = join(root, 'daemon-custom')
    const config = join(root, 'daemon-custom.toml')
    await writeFile(config, `[daemon]\nstorage_path = "${storage}"\n\n[drivers]\nmodules = [${JSON.stringify(EXAMPLE_MODULE)}]\nblock_store = "file-per-block"\nblock_store_options = { checkpointBytes = 65536 }\n`)
    const data = randomBytes(8192)
    const api = async (address: string, method: string, path: string, body?: unknown): Promise<Record<string, unknown>> => {
      const token = (await readFile(join(storage, 'ipc.token'), 'utf8')).trim()
      const response = await fetch(`http://${address}${path}`, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
      const text = await response.text()
      assert.ok(response.ok, `${method} ${path}: ${response.status} ${text}`)
      return text === '' ? {} : JSON.parse(text) as Record<string, unknown>
    }
    let daemon = await startDaemonProcess(['--config', config, '--ipc-address', '127.0.0.1:0'], { cwd: root, tsx: true })
    try {
      const loaded = daemon.logs.map((line) => JSON.parse(line) as { message?: string, registered?: string[] }).find((entry) => entry.message === 'driver module loaded')
      assert.deepEqual(loaded?.registered, ['blockStore file-per-block'])
      assert.equal((await api(daemon.address, 'GET', '/v1/status')).backend, 'file-per-block')
      assert.deepEqual((await api(daemon.address, 'GET', '/v1/config')).blockStoreOptions, { checkpointBytes: 65536 })
      await api(daemon.address, 'POST', '/v1/volumes', { name: 'plugged', sizeBytes: '1M', storageClass: 'fast-local-ssd' })
      await api(daemon.address, 'POST', '/v1/volumes/plugged/write', { offset: 4096, data: data.toString('base64'), concern: 'WriteDurable' })
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
    assert.ok((await readdir(join(storage, 'file-per-block'))).some((name) => /^[0-9a-f]{8}$/.test(name)))
    daemon = await startDaemonProcess(['--config', config, '--ipc-address', '127.0.0.1:0'], { cwd: root, tsx: true })
    try {
      const read = await api(daemon.address, 'POST', '/v1/volumes/plugged/read', { offset: 4096, length: 8192 })
      assert.deepEqual(Buffer.from(read.data as string, 'base64'), data)
    } finally {
      daemon.child.kill('SIGTERM')
      assert.equal(await daemon.exited, 0)
    }
  })

  it('refuses to start (exit code 2) when a named driver is not registered or a module cannot be loaded', async () => {
    const storage = join(root, 'daemon-refused')
    const config = join(root, 'daemon-refused.toml')
    for (const [drivers, message] of [
      ['block_store = "file-per-block"', /\[drivers\] block_store names "file-per-block", which no loaded module registered \(registered: memory, level, file\); list the module that registers it in \[drivers\] modules/],
      ['modules = ["./no-such-driver.js"]', /cannot load the driver module .*no-such-driver\.js named in \[drivers\] modules/],
      [`modules = [${JSON.stringify(EXAMPLE_MODULE)}]\nblock_store = "file-per-block"\nblock_store_options = { shards = 4 }`, /block store 'file-per-block' has no option shards; it accepts location, checkpointBytes/]
    ] as const) {
      await writeFile(config, `[daemon]\nstorage_path = "${storage}"\n\n[drivers]\n${drivers}\n`)
      const { code, log } = await refusedDaemon(config)
      assert.equal(code, 2, log)
      assert.match(log, message)
    }
    await assert.rejects(stat(join(storage, 'metadata')), { code: 'ENOENT' }, 'nothing was opened')
  })
})
