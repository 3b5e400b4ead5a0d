// Descriptors of the drivers that come with GalleonFS, registered before any other (see registry.ts).
// Each loads its implementation with import() when a driver is created, so that importing galleonfs
// never loads a native module.

import { join } from 'node:path'
import { GalleonError } from './errors.js'
import { lazyModule } from './lazy-module.js'
import type { DriverContext, DriverDescriptor, DriverOption } from './registry.js'

const positiveInteger = (value: unknown): void => {
  if (!Number.isSafeInteger(value) || (value as number) <= 0) throw new Error(`must be a positive integer, got ${String(value)}`)
}

const nonEmpty = (value: unknown): void => {
  if (value === '') throw new Error('must not be empty')
}

const KMS_COMMON: Record<string, DriverOption> = {
  keyId: { type: 'string', required: true, validate: nonEmpty, description: 'the name of the key in the KMS' },
  timeoutMs: { type: 'number', description: 'a call taking longer fails (default 30000)' }
}

/** A directory beneath the storage path, or the `location` option; refused for in-memory instances. */
function onDisk (backend: string, location: unknown, context: DriverContext, folder: string): string {
  if (context.inMemory || (location === undefined && context.storagePath === undefined)) {
    throw new GalleonError('INVALID_ARGUMENT', `the ${backend} backend stores data on disk; give storagePath too`)
  }
  return (location as string | undefined) ?? join(context.storagePath as string, folder)
}

// Each backend's module, loaded when a driver of it is first made.
const memoryBackend = lazyModule(async () => await import('../backends/memory/index.js'))
const levelBackend = lazyModule(async () => await import('../backends/level/index.js'))
const fileBackend = lazyModule(async () => await import('../backends/file/index.js'))
const directoryBackend = lazyModule(async () => await import('../backends/directory/index.js'))
const keyProviders = lazyModule(async () => await import('./crypto/keys.js'))
const kmsProviders = lazyModule(async () => await import('./crypto/kms.js'))
const mountManager = lazyModule(async () => await import('./mount/mount-manager.js'))
const fuseBackend = lazyModule(async () => await import('../backends/fuse/index.js'))

/** The built-in drivers, in the order listings show them. */
export const BUILT_IN_DRIVERS: ReadonlyArray<DriverDescriptor<any, any>> = [
  {
    kind: 'blockStore',
    name: 'memory',
    description: 'blocks in a Map, lost at close: for tests',
    options: {},
    create: async () => new (await memoryBackend()).MemoryBlockStore()
  },
  {
    kind: 'blockStore',
    name: 'level',
    description: 'one LevelDB key per block version (classic-level), in <storagePath>/blocks-level',
    options: { location: { type: 'string', validate: nonEmpty, description: 'directory of the database (default <storagePath>/blocks-level)' } },
    isAvailable: async () => await (await levelBackend()).levelBackend.isAvailable(),
    create: async (options: { location?: string }, context: DriverContext) => {
      const { LevelBlockStore } = await levelBackend()
      return new LevelBlockStore({ location: onDisk('level', options.location, context, 'blocks-level') })
    }
  },
  {
    kind: 'blockStore',
    name: 'file',
    description: 'log-structured segment files in <storagePath>/blocks (the default on disk)',
    options: {
      location: { type: 'string', validate: nonEmpty, description: 'directory of the segments (default <storagePath>/blocks)' },
      segmentBytes: { type: 'number', validate: positiveInteger, description: 'size at which a segment is sealed (default 64 MiB)' },
      compactionThreshold: { type: 'number', description: 'live fraction under which a sealed segment is compacted (default 0.4)' },
      syncWriteMaxBytes: { type: 'number', description: 'write groups up to this size are written synchronously on the event loop (default 2 MiB; 0: always through the thread pool)' },
      syncReadMaxBytes: { type: 'number', description: 'reads up to this size are made synchronously on the event loop while they come from the page cache (default 2 MiB; 0: always through the thread pool)' },
      spareSegments: { type: 'number', description: 'emptied segment files kept to be overwritten as later segments, cheaper than new files (default 2; 0: delete them)' },
      relocateScatteredReads: { type: 'boolean', description: 'a multi-block read of records scattered by random overwrites copies them in block order to the end of the log, so later reads of that range are one large read, as btrfs autodefrag (default false)' },
      onBackgroundError: { type: 'function', description: 'receives errors of background work' }
    },
    create: async (options: { location?: string, segmentBytes?: number, compactionThreshold?: number, syncWriteMaxBytes?: number, syncReadMaxBytes?: number, spareSegments?: number, relocateScatteredReads?: boolean, onBackgroundError?: (err: GalleonError) => void }, context: DriverContext) => {
      const { FileBlockStore } = await fileBackend()
      // Background errors go to the caller's handler, and to the instance's io:error events (also
      // when the caller's handler throws: the store then keeps the error in lastBackgroundError).
      const own = options.onBackgroundError
      const report = context.reportBackgroundError
      const onBackgroundError = own === undefined && report === undefined ? undefined : (err: GalleonError) => { try { own?.(err) } finally { report?.(err) } }
      return new FileBlockStore({ ...options, location: onDisk('file', options.location, context, 'blocks'), ...(onBackgroundError === undefined ? {} : { onBackgroundError }) })
    }
  },
  {
    kind: 'backupTarget',
    name: 'directory',
    description: 'chunks and manifests in a directory (local disk or NFS)',
    options: { path: { type: 'string', required: true, validate: nonEmpty, description: 'the directory, created if missing' } },
    create: async (options: { path: string }) => new (await directoryBackend()).DirectoryBackupTarget({ path: options.path })
  },
  {
    kind: 'keyProvider',
    name: 'internal',
    description: 'a master key file (mode 0600), by default <storagePath>/master.key',
    options: {
      path: { type: 'string', validate: nonEmpty, description: 'the master key file (default <storagePath>/master.key)' },
      create: { type: 'boolean', description: 'create the key file when it is missing (default true)' }
    },
    create: async (options: { path?: string, create?: boolean }, context: DriverContext) => {
      const path = options.path ?? (context.storagePath === undefined ? undefined : join(context.storagePath, 'master.key'))
      if (path === undefined) throw new GalleonError('INVALID_ARGUMENT', 'the internal key provider keeps its key file in storagePath; open with storagePath or give the path option')
      const { InternalKeyProvider } = await keyProviders()
      return await InternalKeyProvider.open(path, { create: options.create ?? true })
    }
  },
  {
    kind: 'keyProvider',
    name: 'passphrase',
    description: 'a key derived from a passphrase (scrypt), its salt by default in <storagePath>/passphrase.salt',
    options: {
      passphrase: { type: 'string', required: true, description: 'at least 8 characters' },
      saltPath: { type: 'string', validate: nonEmpty, description: 'the salt file (default <storagePath>/passphrase.salt)' },
      create: { type: 'boolean', description: 'create the salt file when it is missing (default true)' }
    },
    create: async (options: { passphrase: string, saltPath?: string, create?: boolean }, context: DriverContext) => {
      const saltPath = options.saltPath ?? (context.storagePath === undefined ? undefined : join(context.storagePath, 'passphrase.salt'))
      if (saltPath === undefined) throw new GalleonError('INVALID_ARGUMENT', 'a passphrase needs storagePath (its salt is kept there) or the saltPath option')
      const { PassphraseKeyProvider } = await keyProviders()
      return await PassphraseKeyProvider.open(options.passphrase, saltPath, {}, { create: options.create ?? true })
    }
  },
  {
    kind: 'keyProvider',
    name: 'command',
    description: 'a KMS program that wraps and unwraps keys (base64 on stdin and stdout)',
    options: {
      ...KMS_COMMON,
      command: { type: 'string', required: true, validate: nonEmpty, description: 'the program, run without a shell' },
      args: { type: 'array', description: 'arguments before the operation' }
    },
    create: async (options: { keyId: string, command: string, args?: string[], timeoutMs?: number }) => (await kmsProviders()).commandKeyProvider(options)
  },
  {
    kind: 'keyProvider',
    name: 'http',
    description: 'an HTTP KMS endpoint (POST { operation, keyId, context, data })',
    options: {
      ...KMS_COMMON,
      url: { type: 'string', required: true, description: 'https:, or http: to this machine unless insecure' },
      token: { type: 'string', description: 'sent as Authorization: Bearer <token>' },
      insecure: { type: 'boolean', description: 'allow plain http to another host' }
    },
    create: async (options: { keyId: string, url: string, token?: string, timeoutMs?: number, insecure?: boolean }) => (await kmsProviders()).httpKeyProvider(options)
  },
  {
    kind: 'keyProvider',
    name: 'external',
    description: 'wrap and unwrap functions the application supplies',
    options: {
      keyId: KMS_COMMON.keyId as DriverOption,
      wrap: { type: 'function', required: true, description: '(dek, context) => Promise<wrapped>' },
      unwrap: { type: 'function', required: true, description: '(wrapped, context) => Promise<dek>' }
    },
    create: async (options: { keyId: string, wrap: (dek: Uint8Array, context: string) => Promise<Uint8Array>, unwrap: (wrapped: Uint8Array, context: string) => Promise<Uint8Array> }) => new (await keyProviders()).ExternalKeyProvider(options)
  },
  {
    kind: 'mountDriver',
    name: 'virtual',
    description: 'mounts for the VolumeFile API only (the default)',
    options: {},
    create: async () => new (await mountManager()).VirtualMountDriver()
  },
  {
    kind: 'mountDriver',
    name: 'fuse',
    description: 'a FUSE file system per mount point (fuse-native, libfuse 2)',
    options: {},
    // No isAvailable(): create() says exactly what is missing (/dev/fuse, libfuse, fusermount).
    create: async () => await (await fuseBackend()).FuseMountDriver.create()
  }
]
