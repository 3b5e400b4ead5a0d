// Parsing and formatting of human-readable byte sizes (`512K`, `100M`, `1G`, `2T`).

import { GalleonError, describe } from './errors.js'

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 }

/**
 * Parses a size: a non-negative safe integer number of bytes, or a string such as `4096`, `512K`,
 * `100M`, `1.5G`, `2T` (binary multiples; `KB`, `KiB`, `Ki`, `k` are accepted too).
 * Throws INVALID_ARGUMENT naming the accepted forms.
 */
export function parseSize (input: number | string): number {
  if (typeof input === 'number') {
    if (Number.isSafeInteger(input) && input >= 0) return input
    throw new GalleonError('INVALID_ARGUMENT', `size must be a non-negative whole number of bytes, got ${describe(input)}`)
  }
  if (typeof input !== 'string') {
    throw new GalleonError('INVALID_ARGUMENT', `size must be a number of bytes or a string like "512K", "100M", "1G", got ${describe(input)}`)
  }
  // A unit letter may be followed by B, iB or i (Kubernetes' Gi, Mi), and bytes may be written B.
  const match = /^\s*(\d+)(?:\.(\d+))?\s*(?:([kmgtp])(?:i?b|i)?|b)?\s*$/i.exec(input)
  if (match === null) {
    throw new GalleonError('INVALID_ARGUMENT', `cannot parse size ${describe(input)}: use bytes or a number with K, M, G, T or P (e.g. "512K", "100M", "1.5G", "2T")`)
  }
  // Exact decimal arithmetic: "1.00000000000000001K" is not 1024 bytes, and a float product
  // would round it to that without a word.
  const unit = BigInt(UNITS[(match[3] ?? '').toUpperCase()] ?? 1)
  const fraction = match[2] ?? ''
  const scale = 10n ** BigInt(fraction.length)
  const scaled = (BigInt(match[1] as string) * scale + BigInt(fraction === '' ? 0 : fraction)) * unit
  if (scaled % scale !== 0n) {
    throw new GalleonError('INVALID_ARGUMENT', `size ${describe(input)} is not a whole number of bytes; give it in bytes or a smaller unit`)
  }
  const bytes = scaled / scale
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new GalleonError('INVALID_ARGUMENT', `size ${describe(input)} is too large: at most ${Number.MAX_SAFE_INTEGER} bytes (8P less one byte)`)
  }
  return Number(bytes)
}

/** Formats bytes with the largest binary unit that keeps the number ≥ 1, e.g. `1.5G`. */
export function formatSize (bytes: number): string {
  const units = ['', 'K', 'M', 'G', 'T', 'P']
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++ }
  const text = Number.isInteger(value) ? String(value) : value.toFixed(value < 10 ? 2 : 1).replace(/\.?0+$/, '')
  return text + (units[unit] ?? '')
}
