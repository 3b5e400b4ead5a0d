// The register-style checker of the daemon chaos run (test/daemon-chaos.test.ts): patterned blocks
// that name their volume, block, writer and sequence number, the writes as the clients saw them,
// and the check that a volume's bytes hold every write acknowledged as WriteReplicated.

export const BS = 4096
const MAGIC = 0x43484153 // "CHAS"

/** The block writer `writer`'s write number `seq` puts at `block` of volume number `vol`: a header, then bytes that follow from it. */
export function patterned (vol: number, block: number, writer: number, seq: number): Buffer {
  const out = Buffer.alloc(BS)
  out.writeUInt32BE(MAGIC, 0)
  out.writeUInt32BE(vol, 4)
  out.writeUInt32BE(block, 8)
  out.writeUInt32BE(writer, 12)
  out.writeUInt32BE(seq, 16)
  let x = (Math.imul(writer + 1, 0x9e3779b1) ^ Math.imul(seq + 1, 0x85ebca6b) ^ Math.imul(block + 1, 0xc2b2ae35) ^ vol) >>> 0
  for (let i = 20; i < BS; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0
    out[i] = x >>> 24
  }
  return out
}

export type Decoded = { kind: 'zero' } | { kind: 'write', writer: number, seq: number } | { kind: 'corrupt', why: string }

/** What a block read back holds: zeros, one write's pattern (checked byte for byte), or something nobody wrote. */
export function decode (bytes: Uint8Array, vol: number, block: number): Decoded {
  if (bytes.every((b) => b === 0)) return { kind: 'zero' }
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (buf.length !== BS || buf.readUInt32BE(0) !== MAGIC) return { kind: 'corrupt', why: 'no pattern header' }
  const [v, b, writer, seq] = [buf.readUInt32BE(4), buf.readUInt32BE(8), buf.readUInt32BE(12), buf.readUInt32BE(16)]
  if (v !== vol || b !== block) return { kind: 'corrupt', why: `the pattern of volume ${v} block ${b}` }
  if (!patterned(vol, block, writer, seq).equals(buf)) return { kind: 'corrupt', why: `torn: differs from writer ${writer} seq ${seq}'s pattern` }
  return { kind: 'write', writer, seq }
}

/** One write as its client saw it (retries of the same bytes included). */
export interface WriteOp {
  readonly writer: number
  readonly seq: number
  readonly vol: number
  readonly block: number
  readonly concern: string
  /** When the first attempt was sent, and when the answer that acknowledged it came (Infinity until then), in ms on the run's clock (the step log's). */
  readonly start: number
  end: number
  outcome: 'pending' | 'ok' | 'failed'
  /** The node that acknowledged it, and the errors of the attempts before. */
  via?: string
  errors: string[]
}

/**
 * Checks what volume `vol` holds (`bytes`, `blocks` blocks from block 0) against the writes: no
 * block holds bytes nobody wrote or a write never issued to it, and each write acknowledged as
 * WriteReplicated is there, or a write not known to have been acknowledged before it began (a
 * later one, one that overlapped it, or one whose outcome the client never learned). With
 * `readStart`, only writes acknowledged before it count (a read made while writes go on).
 * Returns the problems found (none: an empty list).
 */
export function checkRegister (writes: readonly WriteOp[], vol: number, bytes: Uint8Array, blocks: number, where: string, readStart = Infinity): string[] {
  const problems: string[] = []
  for (let block = 0; block < blocks; block++) {
    const found = decode(bytes.subarray(block * BS, (block + 1) * BS), vol, block)
    const at = `${where}: block ${block}`
    if (found.kind === 'corrupt') { problems.push(`${at} holds bytes no write put there (${found.why})`); continue }
    const issued = writes.filter((w) => w.vol === vol && w.block === block)
    const holder = found.kind === 'write' ? issued.find((w) => w.writer === found.writer && w.seq === found.seq) : undefined
    if (found.kind === 'write' && holder === undefined) { problems.push(`${at} holds writer ${found.writer}'s write ${found.seq}, which was never issued to that block`); continue }
    for (const w of issued) {
      if (w.outcome !== 'ok' || w.concern !== 'WriteReplicated' || w === holder || w.end > readStart) continue
      if (holder === undefined) {
        problems.push(`${at} reads zeros, but writer ${w.writer}'s write ${w.seq} was acknowledged as WriteReplicated (by ${w.via ?? '?'})`)
      } else if (holder.outcome === 'ok' && holder.end < w.start) {
        problems.push(`${at} holds writer ${holder.writer}'s write ${holder.seq} (${holder.concern}, acknowledged by ${holder.via ?? '?'} before the next began), not writer ${w.writer}'s later write ${w.seq} acknowledged as WriteReplicated (by ${w.via ?? '?'})`)
      }
    }
  }
  return problems
}

/** Only what a block could legitimately hold: checks a snapshot's bytes (no WriteReplicated rule: a snapshot is a point in the past). */
export function checkWritten (writes: readonly WriteOp[], vol: number, bytes: Uint8Array, blocks: number, where: string): string[] {
  const problems: string[] = []
  for (let block = 0; block < blocks; block++) {
    const found = decode(bytes.subarray(block * BS, (block + 1) * BS), vol, block)
    if (found.kind === 'corrupt') problems.push(`${where}: block ${block} holds bytes no write put there (${found.why})`)
    else if (found.kind === 'write' && !writes.some((w) => w.vol === vol && w.block === block && w.writer === found.writer && w.seq === found.seq)) problems.push(`${where}: block ${block} holds writer ${found.writer}'s write ${found.seq}, never issued there`)
  }
  return problems
}
