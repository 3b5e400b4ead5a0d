// Volume names, namespaces and ids: their validation, and the key a volume name is looked up by.

import { GalleonError, describe } from '../errors.js'

const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** Whether `text` is shaped like a volume or snapshot id (a UUID). */
export function looksLikeId (text: string): boolean {
  return UUID_PATTERN.test(text)
}
const VOLUME_NAME_PATTERN = /^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/

/** Namespace of volumes created without one. */
export const DEFAULT_NAMESPACE = 'default'
const NAMESPACE_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/

/** Validates a namespace name: 1-63 lowercase letters, digits and '-', like a DNS label. */
export function checkNamespace (namespace: unknown): asserts namespace is string {
  if (typeof namespace !== 'string' || !NAMESPACE_PATTERN.test(namespace)) {
    throw new GalleonError('INVALID_ARGUMENT', `a namespace is 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit, got ${describe(namespace)}`)
  }
}

/** The namespace of a volume record (records from before namespaces are in the default one). */
export function namespaceOf (record: { readonly namespace?: string }): string {
  return record.namespace ?? DEFAULT_NAMESPACE
}

/** Validates a volume name: 1-63 letters, digits, '-', '_', '.', not shaped like a UUID. */
export function checkVolumeName (name: unknown): asserts name is string {
  if (typeof name !== 'string' || !VOLUME_NAME_PATTERN.test(name)) {
    throw new GalleonError('INVALID_ARGUMENT', `volume name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, got ${describe(name)}`)
  }
  if (UUID_PATTERN.test(name)) {
    throw new GalleonError('INVALID_ARGUMENT', `volume name ${JSON.stringify(name)} looks like a volume id; pick a name that is not a UUID so lookups by name or id stay unambiguous`)
  }
}

/** The catalog's lookup key of a volume name in a namespace. */
export function nameKey (namespace: string, name: string): string {
  return `${namespace}/${name}`
}
