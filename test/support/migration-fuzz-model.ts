// The plain byte model behind test/migration-model-fuzz.test.ts: volumes and snapshots as byte
// arrays with their class and pool, the classes and pools of the run, and region writers whose
// calls may interleave with anything (each owns a block range of one volume and remembers every
// state that range went through, so a snapshot or a read after a close can be checked against the
// states it may legitimately show).

import { createHash } from 'node:crypto'
import { WriteConcern, isGalleonError, type GalleonFS } from '../../src/index.js'

/** A storage class of the run, as the model sees it. */
export interface ClassSpec {
  readonly name: string
  readonly encrypted: boolean
  readonly pool?: string
  /** Whether the class carries a QoS policy (so a volume without its own reports source 'storage-class'). */
  readonly qos: boolean
  /** What createStorageClass gets (undefined: built in). */
  readonly definition?: { name: string, parameters: Record<string, string> }
}

export const CLASSES: readonly ClassSpec[] = [
  { name: 'fast-local-ssd', encrypted: false, qos: false },
  { name: 'secret', encrypted: true, qos: false, definition: { name: 'secret', parameters: { encryption: 'true', replication: '1' } } },
  { name: 'plain-a', encrypted: false, pool: 'pa', qos: true, definition: { name: 'plain-a', parameters: { pool: 'pa', qos_limit_iops: '500000', qos_weight: '2' } } },
  { name: 'secret-b', encrypted: true, pool: 'pb', qos: false, definition: { name: 'secret-b', parameters: { encryption: 'true', replication: '1', pool: 'pb' } } }
]

export function classSpec (name: string): ClassSpec {
  const found = CLASSES.find((c) => c.name === name)
  if (found === undefined) throw new Error(`no class ${name} in the model`)
  return found
}

/** Pool names of the run; capacities are in blocks of the backend (see the test's BACKENDS). */
export const POOLS = ['pa', 'pb', 'tight'] as const

export interface ModelSnapshot {
  readonly name: string
  readonly size: number
  data: Uint8Array
}

export interface ModelVolume {
  readonly name: string
  size: number
  data: Uint8Array
  cls: string
  pool: string | undefined
  readonly snapshots: Map<string, ModelSnapshot>
  /** A clone that still reads through its source's snapshot. */
  cloneOf: { volume: string, snapshot: string } | undefined
  /** Has its own QoS policy (setQoSPolicy). */
  qos: boolean
}

/** Deterministic bytes naming the operation that wrote them. */
export function fill (length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length)
  let x = (seed * 2654435761 + 1) >>> 0
  for (let i = 0; i < length; i++) { x = (x * 1103515245 + 12345) >>> 0; out[i] = x >>> 24 }
  return out
}

export function digest (bytes: Uint8Array): string {
  return createHash('sha1').update(bytes).digest('hex')
}

/** First differing byte of two arrays (or -1), for messages. */
export function firstDifference (a: Uint8Array, b: Uint8Array): number {
  if (a.byteLength !== b.byteLength) return Math.min(a.byteLength, b.byteLength)
  if (Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength))) return -1
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return i
  return -1
}

/** Write concerns a writer uses; those a plain volume (or the memory store) cannot meet are refused without effect. */
const CONCERNS = [WriteConcern.WriteAcknowledged, WriteConcern.WriteAcknowledged, WriteConcern.WriteAcknowledged, WriteConcern.WriteDurable, WriteConcern.WriteDurable, WriteConcern.WriteReplicated, WriteConcern.WriteDistributed] as const

/**
 * Random writeBlock / write / trim calls (aligned and not, every write concern) on a block range
 * of one volume, issued one after the other. `history[k]` is the digest of the range after its
 * first k calls; `acked` counts the calls that resolved, `issued` those started. A call refused as
 * predicted (a concern that cannot be met) changes nothing and is not in the history.
 */
export class RegionWriter {
  readonly bytes: Uint8Array
  readonly history: string[]
  readonly log: string[] = []
  acked = 0
  issued = 0
  refused = 0
  #stopping = false
  #done: Promise<void> | undefined
  /** The unexpected failure that stopped it (when the instance is not closing, the run fails with it). */
  failure: unknown

  constructor (
    readonly volume: string,
    /** First block and number of blocks of the range. */
    readonly start: number,
    readonly blocks: number,
    readonly bs: number,
    initial: Uint8Array,
    readonly random: () => number,
    readonly seedBase: number,
    /** WriteDurable cannot be met (memory store). */
    readonly durableRefused: boolean,
    /** Longest write or trim, in blocks (a bulk writer dirties more blocks than a migration's pass settles for). */
    readonly span = 3
  ) {
    this.bytes = initial.slice()
    this.history = [digest(this.bytes)]
  }

  int (below: number): number { return Math.floor(this.random() * below) }

  start_ (g: GalleonFS, closing: () => boolean, minOps: number): void {
    this.#done = this.#run(g, closing, minOps)
  }

  async stop (): Promise<void> {
    this.#stopping = true
    await this.#done
  }

  async #run (g: GalleonFS, closing: () => boolean, minOps: number): Promise<void> {
    const bs = this.bs
    const regionBytes = this.blocks * bs
    const base = this.start * bs
    for (let n = 0; n < minOps || !this.#stopping; n++) {
      const kind = this.random()
      const concern = CONCERNS[this.int(CONCERNS.length)] as WriteConcern
      const refused = concern === WriteConcern.WriteReplicated || concern === WriteConcern.WriteDistributed || (concern === WriteConcern.WriteDurable && this.durableRefused)
      const id = this.seedBase + n
      let call: () => Promise<unknown>
      let apply: () => void
      let text: string
      if (kind < 0.3) {
        const index = this.int(this.blocks)
        const data = fill(bs, id)
        call = async () => await g.writeBlock(this.volume, this.start + index, data, concern)
        apply = () => { this.bytes.set(data, index * bs) }
        text = `writeBlock ${this.start + index} ${concern}`
      } else if (kind < 0.75) {
        const offset = this.int(regionBytes - 1)
        const length = 1 + this.int(Math.min(this.span * bs, regionBytes - offset))
        const data = fill(length, id)
        call = async () => await g.write(this.volume, base + offset, data, concern)
        apply = () => { this.bytes.set(data, offset) }
        text = `write ${base + offset}+${length} ${concern}`
      } else {
        const aligned = this.random() < 0.5
        const offset = aligned ? this.int(this.blocks) * bs : this.int(regionBytes - 1)
        const length = aligned ? bs * (1 + this.int(Math.min(this.span, this.blocks - offset / bs))) : 1 + this.int(Math.min(this.span * bs, regionBytes - offset))
        call = async () => await g.trim(this.volume, base + offset, length)
        apply = () => { this.bytes.fill(0, offset, offset + length) }
        text = `trim ${base + offset}+${length}`
      }
      const isTrim = text.startsWith('trim')
      if (refused && !isTrim) {
        this.log.push(`${text} (refused)`)
        try {
          await call()
        } catch (err) {
          if (isGalleonError(err, 'WRITE_CONCERN_UNSATISFIED')) { this.refused++; continue }
          if (closing()) return
          this.failure = new Error(`${this.volume}: ${text} should be refused with WRITE_CONCERN_UNSATISFIED, got ${String(err)}`)
          return
        }
        this.failure = new Error(`${this.volume}: ${text} should be refused with WRITE_CONCERN_UNSATISFIED, but it resolved`)
        return
      }
      apply()
      this.history.push(digest(this.bytes))
      this.issued++
      this.log.push(text)
      try {
        await call()
      } catch (err) {
        // Closing: the call may or may not have taken effect (the check allows both).
        if (!closing()) this.failure = new Error(`${this.volume}: ${text} failed: ${String(err)}`)
        return
      }
      this.acked++
      if (this.random() < 0.3) {
        // Read-your-writes, whatever the migration is doing: nothing else writes this range.
        let read: Uint8Array
        try {
          read = await g.read(this.volume, base, regionBytes)
        } catch (err) {
          if (!closing()) this.failure = new Error(`${this.volume}: reading blocks ${this.start}+${this.blocks} back failed: ${String(err)}`)
          return
        }
        if (digest(read) !== this.history[this.issued]) {
          const at = firstDifference(read, this.bytes)
          this.failure = new Error(`${this.volume}: blocks ${this.start}+${this.blocks} read back after ${text} differ at byte ${at} (block ${this.start + Math.floor(at / bs)}): read ${read[at]}, wrote ${this.bytes[at]}`)
          return
        }
      }
      if (n % 4 === 3) await new Promise((resolve) => setImmediate(resolve))
    }
  }

  /** Which state (index into history, from `from` on) `bytes` of the range equal, or -1. */
  matches (bytes: Uint8Array, from: number, to: number): number {
    const found = digest(bytes)
    for (let k = from; k <= to && k < this.history.length; k++) if (this.history[k] === found) return k
    return -1
  }
}
