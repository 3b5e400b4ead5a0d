// Child process of the KEK-rotation crash case in test/encryption-edges.test.ts: rotates the
// key-encryption key (internal master key file, or a passphrase) in a loop while it creates
// encrypted volumes and writes to them, until the parent kills it with SIGKILL.
//
// Usage: node --import tsx kek-rotation-child.ts <storagePath> <internal|passphrase> <seqBase> <passphrase>
//
// Protocol: `ready` once open; `V <name> <fill>` once volume <name> holds <fill> in block 0
// (durably); `T <passphrase>` before a passphrase change starts, `P <passphrase>` once it resolved;
// `error <message>` on failure (exit 3).

import { reportLine, runAsChild } from './support.js'

/** scrypt cost of the passphrases (small: the test is about crashes, not key stretching). */
export const PASSPHRASE_COST = 1024
export const BLOCK_BYTES = 4096

async function main (): Promise<void> {
  const [storagePath, mode, seqText, passphrase] = process.argv.slice(2) as [string, 'internal' | 'passphrase', string, string]
  const { GalleonFS, WriteConcern } = await import('../../src/index.js')
  let seq = Number(seqText)
  const g = await GalleonFS.open({ storagePath, ...(mode === 'passphrase' ? { passphrase, passphraseCost: PASSPHRASE_COST } : {}) })
  reportLine('ready')
  for (;;) {
    const name = `v${seq++}`
    await g.createVolume({ name, sizeBytes: 16 * BLOCK_BYTES, storageClass: 'encrypted-storage', replicas: 1 })
    const fill = seq & 0xff
    await g.writeBlock(name, 0, new Uint8Array(BLOCK_BYTES).fill(fill), WriteConcern.WriteDurable)
    reportLine(`V ${name} ${fill}`)
    if (mode === 'passphrase') {
      const next = `passphrase-${seq++}`
      reportLine(`T ${next}`)
      await g.rotateKeyEncryptionKey({ passphrase: next })
      reportLine(`P ${next}`)
    } else {
      await g.rotateKeyEncryptionKey()
    }
  }
}

runAsChild(import.meta.url, main)
