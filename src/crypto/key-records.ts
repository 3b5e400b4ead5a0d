// What the metadata holds about an encrypted volume's keys (its DEKs and backup keys, wrapped by
// the KEK) and how a wrapped key is opened and checked; the key facts reported to callers.

import { hkdf } from '@noble/hashes/hkdf.js'
import { sha256 } from '@noble/hashes/sha2.js'
import type { KeyProvider } from '../drivers.js'
import { GalleonError, copyBytes, describe, reasonOf } from '../errors.js'
import { keySourceFix } from './keys.js'
import { KEY_BYTES } from './cipher.js'

/** One of a volume's DEKs, as its record stores it. */
export interface DataKeyRecord {
  readonly version: number
  /** The DEK wrapped by the KEK, base64. */
  readonly wrapped: string
  /** Id of the KEK that wrapped it. */
  readonly kekId: string
  /** Nonces below this may have been used; counting resumes here. */
  readonly reservedUpTo: number
  /**
   * Public check value of the DEK (see dataKeyCheck): an unwrap that returns other bytes (another
   * KEK under a provider that does not authenticate, a faulty KMS) is refused instead of sealing new
   * writes with a key nothing can open later. Absent in records written before it was added.
   */
  readonly check?: string
}

/** A backup key, wrapped (base64) by the KEK `kekId`, and its public fingerprint. */
export interface BackupKeyRecord { readonly wrapped: string, readonly kekId: string, readonly fingerprint: string }

/** What the metadata holds about an encrypted volume's keys. */
export interface VolumeKeyRecord {
  readonly volumeId: string
  readonly current: number
  readonly keys: readonly DataKeyRecord[]
  /** The key that seals the volume's new backup chunks. */
  readonly backup: BackupKeyRecord
  /**
   * Backup keys that DEK rotations replaced: they seal no new backup, but open the backups taken
   * before (re-wrapped with the rest at a KEK rotation, so a move to another provider keeps them).
   */
  readonly retiredBackups?: readonly BackupKeyRecord[]
  /**
   * Every block generation sealed under the volume's keys is below this (see volume-cipher.ts):
   * the volume's generations resume here at open. Absent in records written before it was added.
   */
  readonly sealedGenerationsBelow?: number
  /** A DEK rotation in progress: blocks below `cursor` are re-sealed with the current key. */
  readonly rotation?: { readonly cursor: number, readonly startedAt: string }
  /**
   * A replicated volume's copy: the rotation of the volume's keys (VolumeSpec.keyGeneration) its
   * current DEK answers. Absent: none (a local volume, or no rotation yet).
   */
  readonly generation?: number
}

/** A volume's backup key, unwrapped, with what a backup manifest records about it. */
export interface BackupKey {
  readonly key: Uint8Array
  readonly fingerprint: string
  readonly wrapped: string
  readonly kekId: string
  readonly provider: string
}

/** Encryption facts of a volume, as getVolumeEncryption() reports them. */
export interface VolumeEncryption {
  readonly encrypted: boolean
  readonly algorithm?: 'AES-256-GCM'
  /** Version of the DEK sealing new writes. */
  readonly keyVersion?: number
  /** DEK versions still holding data (more than one while a rotation runs). */
  readonly keyVersions?: readonly number[]
  /** The key provider and the id of the KEK wrapping the DEKs. */
  readonly provider?: string
  readonly kekId?: string
  /** A DEK rotation in progress: the next block index to re-seal. */
  readonly rotation?: { readonly cursor: number, readonly startedAt: string }
  /**
   * A replicated volume: how many rotations of the volume's keys this node's copy has taken (each
   * copy has its own keys, so `keyVersion` may differ between copies; this does not).
   */
  readonly keyGeneration?: number
  /** Why the keys could not be loaded, if they could not. */
  readonly unavailable?: string
}

export const dekContext = (volumeId: string, version: number): string => `volume:${volumeId}:dek:${version}`
/** The backup key's context does not depend on the instance: a restore elsewhere unwraps it too. */
export const backupKeyContext = (volumeId: string): string => `volume:${volumeId}:backup`

/** Public, stable fingerprint of a backup key (not the key: an HKDF output of it, hashed). */
export function backupKeyFingerprint (key: Uint8Array): string {
  return Buffer.from(sha256(hkdf(sha256, key, undefined, new TextEncoder().encode('galleonfs backup key id'), 32))).toString('hex').slice(0, 24)
}

/**
 * Public check value of a data key (an HKDF output of it, not the key): tells the right DEK from
 * other bytes a key provider may hand back.
 */
export function dataKeyCheck (key: Uint8Array): string {
  return Buffer.from(hkdf(sha256, key, undefined, new TextEncoder().encode('galleonfs data key check'), 16)).toString('hex')
}

/**
 * The DEK `key` of `volumeId` unwrapped by `provider`, checked: a key provider that fails, or that
 * answers with bytes that are not this key (a KEK other than the one that wrapped it, under a
 * provider whose unwrap does not authenticate; a faulty KMS), fails with DECRYPTION_FAILED, so
 * nothing is sealed, re-wrapped or handed over with a wrong key.
 */
export async function unwrapDataKey (provider: KeyProvider, volumeId: string, key: DataKeyRecord): Promise<Uint8Array> {
  const advice = keySourceFix(provider)
  let dek: unknown
  try {
    dek = await provider.unwrap(unb64(key.wrapped), dekContext(volumeId, key.version))
  } catch (err) {
    throw new GalleonError('DECRYPTION_FAILED', `the data key of volume ${volumeId} was wrapped by key ${key.kekId}, which the ${provider.name} key provider (key ${provider.keyId}) cannot unwrap; ${advice}: ${reasonOf(err)}`, { cause: err })
  }
  if (!(dek instanceof Uint8Array) || dek.byteLength !== KEY_BYTES || (key.check !== undefined && dataKeyCheck(dek) !== key.check)) {
    throw new GalleonError('DECRYPTION_FAILED', `the ${provider.name} key provider (key ${provider.keyId}) unwrapped the data key (version ${key.version}) of volume ${volumeId} to bytes that are not that key (${dek instanceof Uint8Array && dek.byteLength === KEY_BYTES ? 'its check value does not match' : `got ${describe(dek)}`}): it is not the key-encryption key that wrapped it (key ${key.kekId}), or the provider is faulty. Nothing was read or written with it; ${advice}`)
  }
  // A copy the provider cannot reach: one that answers every unwrap in the same array (or wipes it
  // later) would otherwise change this volume's key under it, into another volume's key or zeros.
  return copyBytes(dek)
}

/** The backup key of `volumeId` unwrapped by `provider`, checked against its fingerprint (see unwrapDataKey). */
export async function unwrapBackupKey (provider: KeyProvider, volumeId: string, backup: BackupKeyRecord): Promise<Uint8Array> {
  let key: unknown
  try {
    key = await provider.unwrap(unb64(backup.wrapped), backupKeyContext(volumeId))
  } catch (err) {
    throw new GalleonError('DECRYPTION_FAILED', `the backup key of volume ${volumeId} was wrapped by key ${backup.kekId}, which the ${provider.name} key provider (key ${provider.keyId}) cannot unwrap; ${keySourceFix(provider)}: ${reasonOf(err)}`, { cause: err })
  }
  if (!(key instanceof Uint8Array) || key.byteLength !== KEY_BYTES || backupKeyFingerprint(key) !== backup.fingerprint) {
    throw new GalleonError('DECRYPTION_FAILED', `the ${provider.name} key provider (key ${provider.keyId}) unwrapped the backup key of volume ${volumeId} to bytes that are not that key (its fingerprint does not match): it is not the key-encryption key that wrapped it (key ${backup.kekId}), or the provider is faulty; ${keySourceFix(provider)}`)
  }
  return copyBytes(key) // see unwrapDataKey
}

export const unb64 = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, 'base64'))
