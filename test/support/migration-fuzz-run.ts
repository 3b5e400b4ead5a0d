// The migrate step of test/migration-model-fuzz.test.ts (one to three live migrations under
// writers and snapshot readers, each with an action at a random moment, checked against the
// predictions and the model) and the run that draws the steps.

import { GalleonError, type MigrationProgressEvent, type Volume } from '../../src/index.js'
import { seededRandom } from '../../src/seeded-random.js'
import { RegionWriter, firstDifference, type ModelVolume } from './migration-fuzz-model.js'
import { MigrationFuzzSteps, type ActionKind, type MigrationCall } from './migration-fuzz-steps.js'

/** One seeded run on one backend: run(steps) sets it up, draws the steps and checks after each. */
export class MigrationFuzz extends MigrationFuzzSteps {
  /**
   * Migrations of one to three volumes under a write load, each with an action at a random moment
   * (abort, a second migration, a snapshot or other call that must wait, a delete, QoS, or close).
   */
  async stepMigrate (): Promise<void> {
    const g = this.g
    const all = [...this.volumes.values()]
    const chosen = all.sort(() => this.random() - 0.5).slice(0, 1 + this.int(3))
    const into = new Map<string, number>()
    const out = new Map<string, number>()
    const hadSnapshots = new Set(chosen.filter((v) => v.snapshots.size > 0).map((v) => v.name))
    const calls: MigrationCall[] = []
    const byName = new Map<string, { call: MigrationCall, action: ActionKind }>()
    let closeArmed = this.backend.durable && this.chance(0.15)
    for (const v of chosen) {
      const target = this.randomTarget(v)
      const prediction = this.predict(v, target, into, out)
      if (prediction.kind !== 'refuse' && prediction.pool !== v.pool) {
        if (prediction.pool !== undefined) into.set(prediction.pool, (into.get(prediction.pool) ?? 0) + v.size)
        if (v.pool !== undefined) out.set(v.pool, (out.get(v.pool) ?? 0) + v.size)
      }
      const id = (await g.getVolume(v.name)).id
      calls.push({ volume: v.name, volumeId: id, target, prediction, events: [], controller: new AbortController(), aborted: false, second: false })
    }
    // Room for calls that add to a pool while the migrations run (clone, expand): only where even the worst case has it.
    const roomy = (pool: string | undefined, bytes: number): boolean => pool === undefined || (this.capacity.get(pool) as number) - this.provisioned(pool) - (into.get(pool) ?? 0) >= bytes + this.backend.maxBlocks * this.bs
    for (const call of calls) {
      const v = this.volumes.get(call.volume) as ModelVolume
      const targetPool = call.prediction.kind === 'refuse' ? v.pool : call.prediction.pool
      const options: ActionKind[] = ['abort', 'abort', 'second', 'snapshot', 'snapshot', 'qos-set', 'qos-clear']
      if (v.snapshots.size > 0) options.push('revert')
      // Not a snapshot clones came from: deleting it (forced) would change whether the migration is refused.
      if ([...v.snapshots.keys()].some((s) => this.clonesOf(v.name, s).length === 0)) options.push('deleteSnapshot')
      if (v.snapshots.size > 0 && roomy(v.pool, v.size) && roomy(targetPool, v.size)) options.push('clone')
      if (roomy(v.pool, 64 * this.bs) && roomy(targetPool, 64 * this.bs)) options.push('expand')
      if (this.clonesOf(v.name).length === 0 && this.volumes.size > 3) options.push('delete')
      let action = this.pick(options)
      if (closeArmed && this.chance(0.5)) { action = 'close'; closeArmed = false }
      byName.set(call.volume, { call, action })
    }
    // Writers: on some volumes (never one reverted or deleted in this step).
    let closing = false
    const writers: RegionWriter[] = []
    for (const v of this.volumes.values()) {
      const action = byName.get(v.name)?.action
      if (action === 'revert' || action === 'delete' || !this.chance(0.7)) continue
      const blocks = v.size / this.bs
      if (byName.has(v.name) && this.chance(0.3)) {
        // One bulk writer over most of the volume: its passes keep finding hundreds of blocks changed.
        const length = Math.min(blocks, 320)
        const start = this.int(blocks - length + 1)
        writers.push(new RegionWriter(v.name, start, length, this.bs, v.data.subarray(start * this.bs, (start + length) * this.bs), seededRandom(this.int(2 ** 31)), (this.opSeed += 100_000), !this.backend.durable, 64))
        continue
      }
      const regions = 1 + this.int(2)
      const span = Math.floor(blocks / regions)
      for (let r = 0; r < regions; r++) {
        const length = Math.min(16, span, 2 + this.int(15))
        const start = r * span + this.int(span - length + 1)
        writers.push(new RegionWriter(v.name, start, length, this.bs, v.data.subarray(start * this.bs, (start + length) * this.bs), seededRandom(this.int(2 ** 31)), (this.opSeed += 100_000), !this.backend.durable))
      }
    }
    this.log.push(`migrate step: ${calls.map((c) => `${c.volume} -> ${JSON.stringify(c.target)} (${c.prediction.kind === 'refuse' ? c.prediction.code : c.prediction.kind}; action ${byName.get(c.volume)?.action})`).join('; ')}; writers on ${writers.map((w) => `${w.volume}[${w.start}+${w.blocks}]`).join(' ')}`)
    const writerOn = (volume: string): RegionWriter[] => writers.filter((w) => w.volume === volume)

    const pending: Array<Promise<unknown>> = []
    const deferred: Array<() => void> = []
    const acceptClosing = (what: string, err: unknown): void => {
      if (closing && err instanceof GalleonError && (err.code === 'NOT_OPEN' || err.code === 'CANCELLED')) return
      this.fail(`${what} failed: ${String(err)}`)
    }
    let closed: Promise<void> | undefined
    const seconds: MigrationCall[] = []
    const startedSnapshots: Array<{ volume: string, name: string, windows: Array<{ writer: RegionWriter, lo: number, hi: number }> }> = []
    /** Calls made while a migration ran that must wait for it: whether it had reported 'done' when they resolved. */
    const waited: Array<{ call: MigrationCall, action: ActionKind, doneSeen?: boolean }> = []
    const runAction = (call: MigrationCall, action: ActionKind, running: boolean): void => {
      const v = this.volumes.get(call.volume) as ModelVolume
      this.count(`action ${action}`)
      const waiting = running && ['snapshot', 'expand', 'deleteSnapshot', 'revert', 'clone'].includes(action) ? { call, action } as { call: MigrationCall, action: ActionKind, doneSeen?: boolean } : undefined
      if (waiting !== undefined) waited.push(waiting)
      const resolved = (): void => { if (waiting !== undefined) waiting.doneSeen = call.events.some((e) => e.phase === 'done') }
      switch (action) {
        case 'abort':
          if (call.outcome === undefined) call.aborted = true
          call.controller.abort(new Error('the fuzz test aborts it'))
          return
        case 'close':
          closing = true
          closed = g.close()
          return
        case 'second': {
          const second: MigrationCall = { ...call, events: [], controller: new AbortController(), aborted: false, second: true }
          seconds.push(second)
          pending.push(g.migrateVolume(call.volume, call.target, { onProgress: (e) => second.events.push(e) }).then(
            (value) => { second.outcome = { status: 'fulfilled', value } },
            (reason) => { second.outcome = { status: 'rejected', reason } }))
          return
        }
        case 'snapshot': {
          const name = this.name('s')
          const windows = writerOn(v.name).map((writer) => ({ writer, lo: writer.acked, hi: -1 }))
          pending.push(g.createSnapshot(v.name, name).then(() => {
            resolved()
            for (const w of windows) w.hi = w.writer.issued
            startedSnapshots.push({ volume: v.name, name, windows })
          }, (err) => { acceptClosing(`createSnapshot ${v.name} ${name}`, err) }))
          return
        }
        case 'expand': {
          const grow = (1 + this.int(64)) * this.bs
          pending.push(g.expandVolume(v.name, v.size + grow).then(() => { resolved(); deferred.push(() => { this.growModel(v, grow) }) }, (err) => { acceptClosing(`expandVolume ${v.name}`, err) }))
          return
        }
        case 'deleteSnapshot': {
          const s = this.pick([...v.snapshots.values()].filter((snap) => this.clonesOf(v.name, snap.name).length === 0))
          pending.push(g.deleteSnapshot(v.name, s.name).then(() => {
            resolved()
            deferred.push(() => { v.snapshots.delete(s.name) })
          }, (err) => { acceptClosing(`deleteSnapshot ${v.name}@${s.name}`, err) }))
          return
        }
        case 'revert': {
          const s = this.pick([...v.snapshots.values()])
          pending.push(g.restoreSnapshot(v.name, s.name).then(() => {
            resolved()
            deferred.push(() => { v.data = new Uint8Array(v.size); v.data.set(s.data) })
          }, (err) => { acceptClosing(`restoreSnapshot ${v.name}@${s.name}`, err) }))
          return
        }
        case 'clone': {
          const s = this.pick([...v.snapshots.values()])
          const name = this.name('c')
          pending.push(g.cloneVolume({ volume: v.name, snapshot: s.name }, name).then(() => {
            resolved()
            // The clone waited for the migration: it lands in the source's class and pool after it.
            deferred.push(() => {
              const c = this.newVolumeModel(name, s.size, v.cls, v.pool)
              c.data.set(s.data)
              c.cloneOf = { volume: v.name, snapshot: s.name }
        c.qos = v.qos // a clone takes its source's own policy
              clones.push(c)
            })
          }, (err) => { acceptClosing(`cloneVolume ${v.name}@${s.name}`, err) }))
          return
        }
        case 'delete':
          pending.push(g.deleteVolume(v.name).then(() => { deferred.push(() => { this.volumes.delete(v.name) }) }, (err) => { acceptClosing(`deleteVolume ${v.name}`, err) }))
          return
        case 'qos-set':
        case 'qos-clear':
          pending.push(action === 'qos-set'
            ? g.setQoSPolicy(v.name, { limits: { iops: 1_000_000 }, weight: 1 + this.int(4) }).then(() => { deferred.push(() => { v.qos = true }) }, (err) => { acceptClosing(`setQoSPolicy ${v.name}`, err) })
            : g.clearQoSPolicy(v.name).then(() => { deferred.push(() => { v.qos = false }) }, (err) => { acceptClosing(`clearQoSPolicy ${v.name}`, err) }))
      }
    }

    const migratedBefore = this.migrated
    for (const w of writers) w.start_(g, () => closing, 3)
    // Readers of the snapshots the migrating volumes had: each read equals the model, before, during and after the switch-over.
    let reading = true
    const readers = chosen.filter((v) => v.snapshots.size > 0).map(async (v) => {
      const snaps = [...v.snapshots.values()]
      const random = seededRandom(this.int(2 ** 31))
      for (let n = 0; reading || n < 2; n++) {
        const s = snaps[Math.floor(random() * snaps.length)] as (typeof snaps)[number]
        const offset = Math.floor(random() * s.size)
        const length = 1 + Math.floor(random() * Math.min(s.size - offset, 64 * this.bs))
        let data: Uint8Array
        try {
          data = await g.read({ volume: v.name, snapshot: s.name }, offset, length)
        } catch (err) {
          const code = err instanceof GalleonError ? err.code : ''
          const action = byName.get(v.name)?.action
          if ((code === 'SNAPSHOT_NOT_FOUND' && action === 'deleteSnapshot') || (code === 'VOLUME_NOT_FOUND' && action === 'delete') || (closing && code === 'NOT_OPEN')) return
          this.fail(`reading snapshot ${v.name}@${s.name} while it migrates: ${String(err)}`)
        }
        const at = firstDifference(data, s.data.subarray(offset, offset + length))
        if (at >= 0) this.fail(`snapshot ${v.name}@${s.name} read while the volume migrates differs from the model at byte ${offset + at}`)
        this.count('snapshot reads during migrations')
        await new Promise((resolve) => setImmediate(resolve))
      }
    })
    const migrations: Array<Promise<unknown>> = []
    for (const call of calls) {
      const { action } = byName.get(call.volume) as { action: ActionKind }
      // When: right away, after a few milliseconds, or at a progress event of a chosen phase (else when it ends).
      const when = this.pick(['now', 'timer', 'snapshots', 'copy', 'copy', 'switchover'] as const)
      const delay = this.int(20)
      let fired = false
      const fire = (running = false): void => { if (!fired) { fired = true; runAction(call, action, running) } }
      const onProgress = (e: MigrationProgressEvent): void => {
        call.events.push(e)
        // From a progress listener (before 'done'): the migration runs, for sure.
        if (e.phase === when) fire(true)
      }
      migrations.push(g.migrateVolume(call.volume, call.target, { signal: call.controller.signal, onProgress }).then(
        (value) => { call.outcome = { status: 'fulfilled', value } },
        (reason) => { call.outcome = { status: 'rejected', reason } }).then(() => { fire() }))
      if (when === 'now') fire()
      if (when === 'timer') setTimeout(() => { fire() }, delay)
    }
    await Promise.all(migrations)
    // Actions started late may add pending calls; wait for those, then for any second migration.
    for (let settled = 0; settled < pending.length;) {
      const n = pending.length
      await Promise.all(pending.slice(settled))
      settled = n
    }
    reading = false
    await Promise.all(readers)
    for (const w of writers) await w.stop()
    if (closed !== undefined) {
      await closed
      this.count('close with migrations in flight')
      await this.open()
    }
    for (const w of writers) if (w.failure !== undefined) this.fail(String(w.failure))

    // The migrations' outcomes, checked against the predictions, then applied to the model.
    const deleted = new Set(calls.filter((c) => byName.get(c.volume)?.action === 'delete').map((c) => c.volume))
    for (const call of [...calls, ...seconds]) {
      const outcome = call.outcome as PromiseSettledResult<Volume>
      const p = call.prediction
      const what = `${call.second ? 'second ' : ''}migrateVolume ${call.volume} ${JSON.stringify(call.target)} (predicted ${p.kind === 'refuse' ? p.code : p.kind})`
      if (outcome.status === 'fulfilled') {
        if (p.kind === 'refuse' && !call.second) this.fail(`${what} moved the volume`)
        const got = { cls: outcome.value.storageClass, pool: outcome.value.pool }
        if (p.kind !== 'refuse' && (got.cls !== p.cls || got.pool !== p.pool)) this.fail(`${what} resolved with class ${got.cls} pool ${got.pool}`)
        if (p.kind === 'refuse') this.fail(`${what}: a second call moved the volume although the first was to be refused`)
        this.checkProgress(call, true)
        if (hadSnapshots.has(call.volume) && byName.get(call.volume)?.action !== 'deleteSnapshot' && !call.events.some((e) => e.phase === 'snapshots')) this.fail(`${what}: the volume has snapshots, but no 'snapshots' phase was reported`)
        this.count(`moved in ${Math.max(...call.events.map((e) => e.pass))} passes`)
        const v = this.volumes.get(call.volume)
        if (v !== undefined && !deleted.has(call.volume)) { v.cls = p.cls; v.pool = p.pool; v.cloneOf = undefined }
        this.count(call.second ? 'second moved (first had ended)' : 'moved')
        continue
      }
      const err = outcome.reason
      if (!(err instanceof GalleonError)) this.fail(`${what} rejected with ${String(err)}`)
      this.checkProgress(call, false)
      const cancelled = call.aborted || deleted.has(call.volume) || closing
      const ok = (p.kind === 'refuse' && err.code === p.code && !call.second) ||
        (p.kind === 'move-or-no-space' && err.code === 'NO_SPACE') ||
        (err.code === 'CANCELLED' && cancelled) ||
        (closing && err.code === 'NOT_OPEN') ||
        (call.second && ['BUSY', 'INVALID_ARGUMENT', 'NO_SPACE', 'VOLUME_NOT_FOUND'].includes(err.code)) ||
        (deleted.has(call.volume) && err.code === 'VOLUME_NOT_FOUND') ||
        // Started right away, a clone or a second migration may reach the admin queue first.
        (!call.second && call.events.length === 0 && err.code === 'BUSY' && ['clone', 'second'].includes(byName.get(call.volume)?.action ?? ''))
      if (!ok) this.fail(`${what} rejected with ${err.code}: ${err.message}`)
      if (err.code !== 'CANCELLED' && err.code !== 'NOT_OPEN' && call.events.length > 0) this.fail(`${what} was refused with ${err.code} after reporting progress`)
      this.count(`${call.second ? 'second ' : ''}${err.code}`)
    }
    for (const w of waited) {
      if (w.call.outcome?.status === 'fulfilled' && w.doneSeen === false) this.fail(`${w.action} on ${w.call.volume}, called while it migrated, resolved before the migration ended`)
    }
    // Events: the instance's listener saw exactly what each call's onProgress saw (unless it was closed and reopened meanwhile).
    if (closed === undefined) {
      const moved = [...calls, ...seconds].filter((c) => c.outcome?.status === 'fulfilled').length
      if (this.migrated !== migratedBefore + moved) this.fail(`volume:migrated came ${this.migrated - migratedBefore} times for ${moved} completed migrations`)
      for (const call of calls) {
        const mine = [...calls, ...seconds].filter((c) => c.volumeId === call.volumeId).flatMap((c) => c.events)
        const global = this.events.filter((e) => e.volumeId === call.volumeId)
        if (JSON.stringify(mine) !== JSON.stringify(global)) this.fail(`volume:migration-progress events of ${call.volume} differ from its onProgress calls`)
      }
      this.events = []
    }
    const clones: ModelVolume[] = []
    for (const apply of deferred) apply()
    for (const c of clones) await this.seedClone(c)

    // Writers: each range holds one of the states its calls allow (all of them acknowledged, unless closed).
    for (const w of writers) {
      const v = this.volumes.get(w.volume)
      if (v === undefined) continue
      const bytes = await this.g.read(w.volume, w.start * this.bs, w.blocks * this.bs)
      const k = w.matches(bytes, w.acked, w.issued)
      if (k < 0) this.fail(`volume ${w.volume} blocks ${w.start}+${w.blocks} hold none of the states after calls ${w.acked}..${w.issued} of its writer (last calls: ${w.log.slice(-5).join(', ')})`)
      v.data.set(bytes, w.start * this.bs)
    }
    // Snapshots taken during the migrations: each writer's range as after some call between the snapshot's call and its result.
    for (const taken of startedSnapshots) {
      const v = this.volumes.get(taken.volume)
      if (v === undefined) continue
      const data = await this.g.read({ volume: taken.volume, snapshot: taken.name }, 0, v.size)
      const model = v.data.slice()
      for (const { writer, lo, hi } of taken.windows) {
        const range = data.subarray(writer.start * this.bs, (writer.start + writer.blocks) * this.bs)
        if (writer.matches(range, lo, hi) < 0) this.fail(`snapshot ${taken.volume}@${taken.name}: blocks ${writer.start}+${writer.blocks} hold none of the states after calls ${lo}..${hi} of the writer`)
        model.set(range, writer.start * this.bs)
      }
      v.snapshots.set(taken.name, { name: taken.name, size: v.size, data: model })
    }
    await this.checkAll('after the migrate step')
  }

  async run (steps: number): Promise<void> {
    await this.setup()
    await this.checkAll('after setup')
    for (let step = 0; step < steps; step++) {
      const r = this.random()
      const tag = `step ${step}`
      this.log.push(`-- ${tag}`)
      while (this.volumes.size < 3) await this.stepCreate()
      if (r < 0.5) await this.stepMigrate()
      else if (r < 0.58) await this.stepFull()
      else if (r < 0.66) await this.stepCreate()
      else if (r < 0.7) await this.stepDelete()
      else if (r < 0.82) await this.stepAdmin()
      else if (r < 0.87) await this.stepUpdatePool()
      else if (r < 0.93 && this.backend.durable) await this.reopen()
      else await this.stepWrites()
      await this.checkAll(`after ${tag}`)
    }
    if (this.backend.durable) {
      await this.reopen()
      await this.checkAll('after the last reopen')
    }
    await this.g.close()
  }
}
