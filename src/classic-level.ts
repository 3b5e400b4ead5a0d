// Loads classic-level on first use, so importing galleonfs never needs its native binding.

import { GalleonError } from './errors.js'

/** The ClassicLevel class, or BACKEND_UNAVAILABLE naming the package to install for `purpose`. */
export async function loadClassicLevel (purpose: string): Promise<typeof import('classic-level').ClassicLevel> {
  try {
    return (await import('classic-level')).ClassicLevel
  } catch (err) {
    throw new GalleonError('BACKEND_UNAVAILABLE', `${purpose} needs the classic-level package, which could not be loaded; install it with \`npm install classic-level\` (it ships prebuilt binaries for common platforms)`, { cause: err })
  }
}
