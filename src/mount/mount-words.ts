// Mount option words: those the mount manager handles itself, those the built-in mount drivers
// apply, and the checks of a storage class's `mountOptions` (their form when the class is parsed,
// the words a driver of this build knows when it is created, those the instance's driver applies
// when a volume of the class is mounted). A word no one applies is refused, never ignored.

import { GalleonError, quoted } from '../errors.js'

/**
 * Option words the mount manager itself understands, whatever the driver (none goes to the driver):
 * `encrypted` is the seed's (`--options rw,encrypted`), checked against the volume.
 */
export const MANAGER_WORDS: readonly string[] = Object.freeze(['ro', 'rw', 'sync', 'async', 'encrypted'])

/**
 * The words the built-in mount drivers apply besides the manager's. The `fuse` driver passes
 * `allow_other`, `noatime`, `nodev`, `nosuid` and `noexec` to libfuse 2 as mount flags (the kernel
 * keeps them on the mount), and applies `noatime`, `nodiratime` and `relatime` in the access times
 * it reports (the kernel leaves a FUSE file system's atime to it; libfuse 2 refuses `nodiratime`
 * and `relatime` as mount options). The `virtual` driver lists the same, so that a class or a call
 * written for one works with the other.
 */
export const BUILT_IN_DRIVER_WORDS: readonly string[] = Object.freeze(['allow_other', 'noatime', 'nodiratime', 'relatime', 'nodev', 'nosuid', 'noexec'])

/**
 * Words of other file systems' mounts that GalleonFS refuses on purpose, with why and what to use
 * instead (added to the message that refuses them).
 */
const NOT_OFFERED: Readonly<Record<string, string>> = Object.freeze({
  nobarrier: 'a volume\'s flushes (fsync, and every write of a sync mount) are what make its writes durable, and no mount of GalleonFS drops them',
  'barrier=0': 'a volume\'s flushes (fsync, and every write of a sync mount) are what make its writes durable, and no mount of GalleonFS drops them'
})

/**
 * Why `words` that no driver applies are refused on purpose, and what to do instead: '' when none
 * is such a word. A sentence of its own, starting with '. ', to end a message with.
 */
export function notOffered (words: readonly string[]): string {
  const refused = words.filter((word) => Object.hasOwn(NOT_OFFERED, word))
  if (refused.length === 0) return ''
  const why = [...new Set(refused.map((word) => NOT_OFFERED[word]))].join('; ')
  return `. ${refused.map(quoted).join(' and ')} ${refused.length === 1 ? 'is' : 'are'} not offered: ${why}; leave ${refused.length === 1 ? 'it' : 'them'} out: for speed, a mount without "sync" (or with "async", the default) already acknowledges writes before they are durable, and fsync makes them so`
}

/** Every word a mount driver of this build knows. */
export const BUILT_IN_WORDS: readonly string[] = Object.freeze([...MANAGER_WORDS, ...BUILT_IN_DRIVER_WORDS])

/** `noatime`, or `key=value` (such as `uid=1000`): letters, digits, '_', '-', '.'; a value without spaces or commas. */
const WORD_FORM = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(=[^\s,="']{1,256})?$/

/**
 * The `mountOptions` of a storage class being parsed: a list of words, each of the form a mount
 * option has. INVALID_ARGUMENT naming the class, the word and the words a class may list.
 */
export function parseClassMountWords (className: string, input: unknown): string[] {
  if (input === undefined || input === null) return []
  if (!Array.isArray(input)) throw invalid(`storage class ${className}: "mount_options" must be a list of mount option words such as ["noatime", "sync"], got ${typeof input === 'string' ? `${quoted(input)} (a string: give a list)` : typeof input}`)
  const words: string[] = []
  for (const [index, word] of input.entries()) {
    if (typeof word !== 'string') throw invalid(`storage class ${className}: mount option ${index + 1} must be a word such as "noatime", got ${word === null ? 'null' : typeof word}; ${mayList()}`)
    if (word.length === 0) throw invalid(`storage class ${className}: mount option ${index + 1} is empty; leave it out, or give a word: ${mayList()}`)
    if (word.includes(',')) {
      const parts = word.split(',').map((part) => part.trim()).filter((part) => part.length > 0)
      throw invalid(`storage class ${className}: mount option ${quoted(word)} holds several words; give each as its own item (${JSON.stringify(parts)}); ${mayList()}`)
    }
    if (!WORD_FORM.test(word)) {
      throw invalid(`storage class ${className}: mount option ${quoted(word)} is not a mount option word: a word is letters, digits, '_', '-' or '.' (such as "noatime"), or key=value with a non-empty key and value and no spaces; ${mayList()}`)
    }
    words.push(word)
  }
  return words
}

/**
 * Refuses (INVALID_ARGUMENT) a storage class word that no mount driver of this build knows (a typo
 * such as `noatme`, or `nobarrier`, which no driver here applies): `driverWords` are those the
 * instance's driver accepts (MountManager.acceptedOptions), undefined when it takes every word
 * (a driver of one's own that lists none: it refuses what it does not know when mounting).
 */
export function checkClassMountWords (className: string, words: readonly string[], driverWords: readonly string[] | undefined): void {
  if (driverWords === undefined) return
  const known = [...new Set([...BUILT_IN_WORDS, ...driverWords])]
  const unknown = words.filter((word) => !known.includes(word))
  if (unknown.length === 0) return
  const hints = unknown.map((word) => ({ word, near: nearest(word, known) })).filter((hint) => hint.near !== undefined).map((hint) => `${quoted(hint.word)} looks like ${quoted(hint.near as string)}`)
  throw invalid(`storage class ${className}: unknown mount option${unknown.length === 1 ? '' : 's'} ${unknown.map(quoted).join(', ')}${hints.length === 0 ? '' : ` (${hints.join('; ')})`}: no mount driver of this build applies ${unknown.length === 1 ? 'it' : 'them'}, so a mount of the class's volumes could only fail or ignore ${unknown.length === 1 ? 'it' : 'them'}; nothing was created. The options a storage class may list are ${known.join(', ')}${notOffered(unknown)}`)
}

/**
 * Refuses (INVALID_ARGUMENT) to mount a volume whose storage class lists a word the instance's
 * mount driver does not apply (`accepted`: MountManager.acceptedOptions; undefined: every word is
 * handed to the driver). A class stored by an earlier release may hold any word: it still loads,
 * and this says how to fix it.
 */
export function checkClassWordsForMount (target: { className?: string, volumeName: string, classOptions: readonly string[] }, accepted: readonly string[] | undefined, driver: string): void {
  if (accepted === undefined) return
  const unknown = [...new Set(target.classOptions.filter((word) => !accepted.includes(word)))]
  if (unknown.length === 0) return
  const them = unknown.length === 1 ? 'it' : 'them'
  // A word some built-in driver applies: another driver is a way out too; a word none applies
  // (a typo, or one refused on purpose) has only the one.
  const nowhere = unknown.every((word) => !BUILT_IN_WORDS.includes(word))
  const otherDriver = nowhere ? '' : `, or open GalleonFS with a mount driver that applies ${them}`
  throw invalid(`storage class ${target.className ?? '(unknown)'} of volume ${target.volumeName} lists the mount option${unknown.length === 1 ? '' : 's'} ${unknown.map(quoted).join(', ')}, which the ${driver} mount driver does not apply${nowhere ? ` (no mount driver of this build applies ${them})` : ''}, so nothing was mounted rather than a mount without ${them}; the options it applies are ${accepted.join(', ')}. Create a storage class without ${them} (createStorageClass) and move the volume there (migrateVolume(vol, { storageClass }))${otherDriver}${notOffered(unknown)}`)
}

function mayList (): string {
  return `the options a storage class may list are ${BUILT_IN_WORDS.join(', ')} (and those a mount driver of one's own lists in MountDriver.options)`
}

/** The known word at most two edits from `word` (a typo such as `noatme`), if there is one. */
function nearest (word: string, known: readonly string[]): string | undefined {
  let best: { word: string, distance: number } | undefined
  for (const candidate of known) {
    const distance = editDistance(word.toLowerCase(), candidate)
    if (distance <= 2 && distance < word.length && (best === undefined || distance < best.distance)) best = { word: candidate, distance }
  }
  return best?.word
}

function editDistance (a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) current.push(Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1)))
    previous = current
  }
  return previous[b.length] ?? 0
}

function invalid (message: string): GalleonError {
  return new GalleonError('INVALID_ARGUMENT', message)
}
