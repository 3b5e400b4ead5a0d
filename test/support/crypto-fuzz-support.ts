// Helpers of the encryption model fuzz (test/encryption-model-fuzz.test.ts, crypto-fuzz-*.ts): block
// data carrying unique plaintext markers, a scan of a directory for markers, and a stand-in KMS
// program for commandKeyProvider (written to a temp dir, run as a real child process per wrap and unwrap).

import { readFile, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

/** A marker: 'GFZ-', 8 hex digits, '-' (13 bytes); unique per written block. */
export const MARKER_BYTES = 13
const MARKER_PATTERN = /GFZ-[0-9a-f]{8}-/g

export function markerText (n: number): string {
  return `GFZ-${n.toString(16).padStart(8, '0')}-`
}

/** Every marker in `bytes`. */
export function markersIn (bytes: Uint8Array, into = new Set<string>()): Set<string> {
  for (const match of Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1').matchAll(MARKER_PATTERN)) into.add(match[0])
  return into
}

/**
 * Every marker in any file under `dir` (files vanishing meanwhile, such as compacted segments, are
 * skipped), with the files holding each.
 */
export async function markersUnder (dir: string): Promise<Map<string, string[]>> {
  const found = new Map<string, string[]>()
  const walk = async (at: string): Promise<void> => {
    let entries
    try {
      entries = await readdir(at, { withFileTypes: true })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw err
    }
    for (const entry of entries) {
      const path = join(at, entry.name)
      if (entry.isDirectory()) await walk(path)
      else if (entry.isFile()) {
        try {
          for (const marker of markersIn(await readFile(path))) found.set(marker, [...found.get(marker) ?? [], path.slice(dir.length + 1)])
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
        }
      }
    }
  }
  await walk(dir)
  return found
}

/** Fills `out` with pseudo-random bytes from `random` (4 bytes per call). */
export function randomFill (out: Uint8Array, random: () => number): Uint8Array {
  for (let i = 0; i < out.byteLength; i += 4) {
    const word = Math.floor(random() * 0x1_0000_0000)
    out[i] = word & 0xff
    if (i + 1 < out.byteLength) out[i + 1] = (word >>> 8) & 0xff
    if (i + 2 < out.byteLength) out[i + 2] = (word >>> 16) & 0xff
    if (i + 3 < out.byteLength) out[i + 3] = word >>> 24
  }
  return out
}

/**
 * A KMS speaking GalleonFS's command protocol: `node kms.mjs <key file> wrap|unwrap`, base64 on stdin
 * and stdout; AES-256-GCM under the hex key in the key file, bound to GALLEONFS_KEY_ID and
 * GALLEONFS_KEY_CONTEXT. A missing key file or a wrap it cannot open fails with a message on stderr.
 */
const KMS_SCRIPT = `import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
const [keyFile, operation] = process.argv.slice(2)
let key
try { key = Buffer.from(readFileSync(keyFile, 'utf8').trim(), 'hex') } catch (err) { process.stderr.write('no KMS key: ' + err.message + '\\n'); process.exit(5) }
const input = Buffer.from(readFileSync(0, 'utf8').trim(), 'base64')
const aad = Buffer.from((process.env.GALLEONFS_KEY_ID ?? '') + '\\n' + (process.env.GALLEONFS_KEY_CONTEXT ?? ''))
if (operation === 'wrap') {
  const nonce = randomBytes(12)
  const cipher = createCipheriv('aes-256-gcm', key, nonce).setAAD(aad)
  const body = Buffer.concat([cipher.update(input), cipher.final()])
  process.stdout.write(Buffer.concat([nonce, body, cipher.getAuthTag()]).toString('base64') + '\\n')
} else if (operation === 'unwrap') {
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, input.subarray(0, 12)).setAAD(aad)
    decipher.setAuthTag(input.subarray(input.length - 16))
    process.stdout.write(Buffer.concat([decipher.update(input.subarray(12, input.length - 16)), decipher.final()]).toString('base64') + '\\n')
  } catch {
    process.stderr.write('unwrap refused: wrong key or context\\n')
    process.exit(4)
  }
} else {
  process.stderr.write('unknown operation ' + operation + '\\n')
  process.exit(2)
}
`

/** Writes the KMS program into `dir`; returns its path. */
export async function writeKmsScript (dir: string): Promise<string> {
  const path = join(dir, 'fuzz-kms.mjs')
  await writeFile(path, KMS_SCRIPT)
  return path
}
