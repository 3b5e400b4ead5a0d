// The model for test/h42-concurrent-overlap.test.ts: operations on byte ranges issued together, and
// what a read, a snapshot or the final state may show of them. Per block, the operations touching
// it are applied in the order they were issued (README: "writes to one block are applied in the
// order they were issued"), so any view shows, per block, a prefix of that list; a multi-block
// operation is in a view wholly or not at all; a view taken between two instants holds every
// operation that had resolved before it was asked for and none that was called after it answered.

/** What an operation does to its range. */
export type OpKind = 'write' | 'zero' | 'trim' | 'block'

/** One operation of a round, with the logical times of its call and its resolution. */
export interface Op {
  readonly id: number
  readonly volume: string
  readonly kind: OpKind
  readonly offset: number
  readonly length: number
  /** The bytes written (write, block); absent for zero and trim, which leave zeros. */
  readonly data?: Uint8Array
  calledAt: number
  resolvedAt: number
}

/** A logical clock: one tick per call and per resolution observed. */
export class Clock {
  now = 0
  tick (): number { return ++this.now }
}

export function describeOp (op: Op): string {
  return `#${op.id} ${op.kind} ${op.volume} @${op.offset} +${op.length} (called t${op.calledAt}, resolved t${op.resolvedAt})`
}

/** Applies `op` to `image` (a whole volume, or one block of it starting at byte `base`). */
export function applyOp (image: Uint8Array, op: Op, base = 0): void {
  const from = Math.max(op.offset, base)
  const to = Math.min(op.offset + op.length, base + image.byteLength)
  if (to <= from) return
  if (op.data === undefined) image.fill(0, from - base, to - base)
  else image.set(op.data.subarray(from - op.offset, to - op.offset), from - base)
}

/** The operations of `ops` (in issue order) that touch block `index`. */
export function opsOnBlock (ops: readonly Op[], index: number, blockSize: number): Op[] {
  const start = index * blockSize
  const end = start + blockSize
  return ops.filter((op) => op.offset < end && op.offset + op.length > start)
}

/** The block's contents after each prefix of `ops`: states[k] has the first k applied. */
export function prefixStates (before: Uint8Array, index: number, blockSize: number, ops: readonly Op[]): Uint8Array[] {
  const states = [before.slice(index * blockSize, (index + 1) * blockSize)]
  for (const op of ops) {
    const next = (states[states.length - 1] as Uint8Array).slice()
    applyOp(next, op, index * blockSize)
    states.push(next)
  }
  return states
}

function equalRange (a: Uint8Array, aFrom: number, b: Uint8Array, bFrom: number, length: number): boolean {
  for (let i = 0; i < length; i++) if (a[aFrom + i] !== b[bFrom + i]) return false
  return true
}

/** One block of a view: the ops on it in issue order, and the prefix lengths its bytes agree with. */
interface BlockChoice { index: number, ops: Op[], candidates: number[] }

/** The outcome of checking a view: ok with the ops it holds, or why not. */
export type CutResult = { ok: true, held: Set<number> } | { ok: false, why: string }

/**
 * Whether `seen` (the bytes offset..offset+seen.length of a view of a volume that was `before`
 * when the round's `ops` started) is what the volume held at one instant between the view's call
 * (`calledAt`) and its answer (`resolvedAt`). `realTime`: also require that an op in the view
 * implies every op that resolved before it was called (only sound when the view covers every op).
 */
export function checkCut (before: Uint8Array, ops: readonly Op[], blockSize: number, offset: number, seen: Uint8Array, calledAt: number, resolvedAt: number, realTime: boolean): CutResult {
  const choices: BlockChoice[] = []
  const end = offset + seen.byteLength
  for (let index = Math.floor(offset / blockSize); index * blockSize < end; index++) {
    const on = opsOnBlock(ops, index, blockSize)
    const states = prefixStates(before, index, blockSize, on)
    const from = Math.max(offset, index * blockSize)
    const to = Math.min(end, (index + 1) * blockSize)
    const candidates: number[] = []
    for (let k = 0; k < states.length; k++) {
      if (equalRange(states[k] as Uint8Array, from - index * blockSize, seen, from - offset, to - from)) candidates.push(k)
    }
    if (candidates.length === 0) {
      return { ok: false, why: `block ${index} (bytes ${from}..${to}) matches no prefix of the ${on.length} operations on it in issue order [${on.map((op) => op.id).join(', ')}]: ${perByte(before, on, from, seen.subarray(from - offset, to - offset))}` }
    }
    choices.push({ index, ops: on, candidates })
  }
  choices.sort((a, b) => a.candidates.length - b.candidates.length)
  const assigned = new Map<number, boolean>()
  const byId = new Map(ops.map((op) => [op.id, op]))
  let budget = 200_000
  const fits = (op: Op, held: boolean): boolean => {
    if (held && op.calledAt > resolvedAt) return false // called after the view answered
    if (!held && op.resolvedAt > 0 && op.resolvedAt < calledAt) return false // resolved before the view was asked for
    const was = assigned.get(op.id)
    return was === undefined || was === held
  }
  const realTimeOk = (): boolean => {
    if (!realTime) return true
    for (const [yId, yHeld] of assigned) {
      if (!yHeld) continue
      const y = byId.get(yId) as Op
      for (const [xId, xHeld] of assigned) {
        if (xHeld) continue
        const x = byId.get(xId) as Op
        if (x.resolvedAt > 0 && x.resolvedAt < y.calledAt) return false
      }
    }
    return true
  }
  const search = (at: number): boolean => {
    if (--budget < 0) throw new Error('checkCut: search budget exhausted')
    if (at === choices.length) return realTimeOk()
    const choice = choices[at] as BlockChoice
    for (const k of choice.candidates) {
      const set: number[] = []
      let good = true
      for (let i = 0; i < choice.ops.length && good; i++) {
        const op = choice.ops[i] as Op
        const held = i < k
        if (!fits(op, held)) good = false
        else if (!assigned.has(op.id)) { assigned.set(op.id, held); set.push(op.id) }
      }
      if (good && search(at + 1)) return true
      for (const id of set) assigned.delete(id)
    }
    return false
  }
  if (search(0)) return { ok: true, held: new Set([...assigned].filter(([, held]) => held).map(([id]) => id)) }
  return { ok: false, why: `no single set of whole operations explains every block (per block the candidates were ${choices.map((c) => `${c.index}:[${c.candidates.join(',')}]/${c.ops.length}`).join(' ')}); ops resolved before the view was asked for must be in it, ops called after it answered must not${realTime ? ', and an op in it brings every op that resolved before it was called' : ''}` }
}

/** A per-byte account of a mismatch: the first bytes that came from no operation covering them. */
export function perByte (before: Uint8Array, ops: readonly Op[], from: number, seen: Uint8Array): string {
  const bad: string[] = []
  for (let i = 0; i < seen.byteLength && bad.length < 4; i++) {
    const at = from + i
    const allowed = new Set<number>([before[at] as number])
    for (const op of ops) {
      if (at < op.offset || at >= op.offset + op.length) continue
      allowed.add(op.data === undefined ? 0 : op.data[at - op.offset] as number)
    }
    if (!allowed.has(seen[i] as number)) bad.push(`byte ${at} is ${seen[i]}, allowed ${[...allowed].join('/')}`)
  }
  return bad.length === 0 ? 'every byte is one some operation covering it (or the old value) allows, but not as a whole' : bad.join('; ')
}

/** Whether `seen` (one whole block) is what some serial order of `ops` produces (the brief's weaker rule). */
export function someSerialOrder (before: Uint8Array, index: number, blockSize: number, ops: readonly Op[], seen: Uint8Array): boolean | undefined {
  if (ops.length > 8) return undefined
  const base = index * blockSize
  const permute = (rest: Op[], state: Uint8Array): boolean => {
    if (rest.length === 0) return equalRange(state, 0, seen, 0, blockSize)
    for (let i = 0; i < rest.length; i++) {
      const next = state.slice()
      applyOp(next, rest[i] as Op, base)
      if (permute([...rest.slice(0, i), ...rest.slice(i + 1)], next)) return true
    }
    return false
  }
  return permute([...ops], before.slice(base, base + blockSize))
}

/**
 * The final state check: every block of `seen` (the whole volume after all ops resolved) must be
 * the ops on it applied in issue order. Returns undefined when it is, else what differs.
 */
export function checkFinal (before: Uint8Array, ops: readonly Op[], blockSize: number, seen: Uint8Array, ordered = true): string | undefined {
  const problems: string[] = []
  for (let index = 0; index * blockSize < seen.byteLength; index++) {
    const on = opsOnBlock(ops, index, blockSize)
    const block = seen.subarray(index * blockSize, (index + 1) * blockSize)
    const states = prefixStates(before, index, blockSize, on)
    const last = states[states.length - 1] as Uint8Array
    if (ordered && equalRange(last, 0, block, 0, blockSize)) continue
    const serial = someSerialOrder(before, index, blockSize, on, block)
    if (!ordered && serial !== false) continue
    problems.push(`block ${index} after [${on.map(describeOp).join('; ')}]: ${ordered ? 'not the issue order' : 'no serial order'}; ${serial === true ? 'but some other serial order gives it' : serial === false ? 'and no serial order of them gives it' : 'too many ops to try every order'}; ${perByte(before, on, index * blockSize, block)}`)
    if (problems.length >= 3) break
  }
  return problems.length === 0 ? undefined : problems.join('\n')
}
