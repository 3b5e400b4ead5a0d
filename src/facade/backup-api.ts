// The public calls on backups and backup policies: their arguments, targets and the caller's rights
// checked and audited, then BackupManager or BackupScheduler does the work.

import { EVERY_VOLUME, type Verb } from '../access/access-control.js'
import { mountControl } from '../mount/mount-manager.js'
import { GalleonError, errorCode } from '../errors.js'
import { checkDeleteBackupOptions, type Backup, type BackupAdoption, type BackupHooks, type BackupTargetRef, type BackupVerification, type CreateBackupOptions, type DeleteBackupOptions, type DeleteBackupResult, type RestoreBackupOptions } from '../backup/manager.js'
import type { BackupPolicy, BackupPolicyOptions, BackupPolicyRun } from '../backup/policies.js'
import type { Volume } from '../types.js'
import { checkNamespace } from '../volumes/catalog.js'
import type { Facade } from './assembly.js'
import { namedArgument } from './access-guard.js'
import { assertNothingAttached, backupObject, findBackup } from './backups.js'
import type { VolumeRef } from './refs.js'

/** GalleonFS's calls on backups and backup policies (see their documentation there). */
export class BackupApi {
  readonly #f: Facade

  constructor (f: Facade) {
    this.#f = f
  }

  async createBackup (vol: VolumeRef, options: CreateBackupOptions = {}): Promise<Backup> {
    this.#f.state.assertOpen()
    const { object, label } = this.#f.gate.refObject(vol)
    await this.#f.gate.checkTarget('createBackup', options)
    const details = { strategy: String(options?.strategy ?? 'full'), ...(options?.policy === undefined ? {} : { policy: String(options.policy) }) }
    return await this.#f.gate.guard('createBackup', 'backup:create', object, label, async () => await this.#f.backups.create(vol, options), details)
  }

  async listBackups (vol?: VolumeRef, options: { target?: BackupTargetRef } = {}): Promise<Backup[]> {
    this.#f.state.assertOpen()
    await this.#f.gate.checkTarget('listBackups', options)
    return (await this.#f.gate.nested(async () => await this.#f.backups.list(vol, options))).filter((backup) => this.#f.gate.allowed('backup:read', backupObject(backup)))
  }

  async getBackup (backupId: string, options: { target?: BackupTargetRef } = {}): Promise<Backup> {
    this.#f.state.assertOpen()
    await this.#f.gate.checkTarget('getBackup', options)
    const backup = await findBackup(this.#f.gate, this.#f.backups, 'getBackup', 'backup:read', backupId, options)
    await this.#f.gate.check('getBackup', 'backup:read', backupObject(backup), `backup:${backup.id}`)
    return backup
  }

  async verifyBackup (backupId: string, options: { target?: BackupTargetRef } = {}): Promise<BackupVerification> {
    this.#f.state.assertOpen()
    await this.#f.gate.checkTarget('verifyBackup', options)
    const backup = await findBackup(this.#f.gate, this.#f.backups, 'verifyBackup', 'backup:read', backupId, options)
    await this.#f.gate.check('verifyBackup', 'backup:read', backupObject(backup), `backup:${backup.id}`)
    return await this.#f.backups.verify(backupId, options)
  }

  async adoptBackup (backupId: string, options: { target?: BackupTargetRef } = {}): Promise<BackupAdoption> {
    this.#f.state.assertOpen()
    await this.#f.gate.checkTarget('adoptBackup', options)
    const backup = await findBackup(this.#f.gate, this.#f.backups, 'adoptBackup', 'admin', backupId, options)
    return await this.#f.gate.guard('adoptBackup', 'admin', EVERY_VOLUME, `backup:${backup.id}`, async () => await this.#f.backups.adopt(backupId, options))
  }

  async deleteBackup (backupId: string, options: DeleteBackupOptions = {}): Promise<DeleteBackupResult> {
    this.#f.state.assertOpen()
    await this.#f.gate.checkTarget('deleteBackup', options)
    try {
      checkDeleteBackupOptions(options)
    } catch (err) {
      throw await this.#refusedArguments('deleteBackup', 'backup:delete', backupId, options, err)
    }
    const backup = await findBackup(this.#f.gate, this.#f.backups, 'deleteBackup', 'backup:delete', backupId, options)
    return await this.#f.gate.guard('deleteBackup', 'backup:delete', backupObject(backup), `backup:${backup.id}`, async () => await this.#f.backups.delete(backupId, options), options?.force === true ? { force: true } : undefined)
  }

  async restoreBackup (backupId: string, options: RestoreBackupOptions = {}): Promise<Volume> {
    this.#f.state.assertOpen()
    await this.#f.gate.checkTarget('restoreBackup', options)
    try {
      if (options?.volume !== undefined && options.namespace !== undefined) throw new GalleonError('INVALID_ARGUMENT', 'restoreBackup() takes a namespace only with { name } (a new volume); { volume } names an existing one')
      if (options?.volume !== undefined && options.pool !== undefined) throw new GalleonError('INVALID_ARGUMENT', 'restoreBackup() takes a pool only for a new volume ({ name }); { volume } names an existing one, which stays in its pool')
    } catch (err) {
      throw await this.#refusedArguments('restoreBackup', 'backup:restore', backupId, options, err)
    }
    const backup = await findBackup(this.#f.gate, this.#f.backups, 'restoreBackup', 'backup:restore', backupId, options)
    // The restore writes somewhere: the caller must be allowed that too.
    if (options?.volume !== undefined) {
      const into = this.#f.gate.refObject(options.volume)
      const denied = this.#f.gate.check('restoreBackup', 'volume:write', into.object, into.label)
      if (denied !== undefined) await denied
      const record = await this.#f.gate.nested(async () => this.#f.catalog.resolve(options.volume)).catch(() => undefined)
      if (record !== undefined) assertNothingAttached(mountControl(this.#f.mounts), record.id, record.name)
    } else {
      const namespace = options?.namespace ?? this.#f.catalog.currentNamespace()
      const name = options?.name ?? `${backup.volumeName}-restored-${backup.id.slice(0, 8)}`
      try {
        checkNamespace(namespace)
      } catch (err) {
        // Checked as a valid call is: restoring the backup, then creating the volume it names.
        const ns = namedArgument(() => namespace)
        const named = namedArgument(() => name)
        const restore = { verb: 'backup:restore' as const, object: backupObject(backup), label: `backup:${backup.id}` }
        throw await this.#f.gate.refusedArguments('restoreBackup', 'volume:create', { namespace: ns.check, volume: named.check }, `volume:${ns.label}/${named.label}`, err, { before: [restore] })
      }
      const denied = this.#f.gate.check('restoreBackup', 'volume:create', { namespace, volume: name }, `volume:${namespace}/${name}`)
      if (denied !== undefined) await denied
    }
    const into = options?.volume !== undefined ? this.#f.gate.refObject(options.volume).label : `volume:${options?.namespace ?? this.#f.catalog.currentNamespace()}/${options?.name ?? `${backup.volumeName}-restored-${backup.id.slice(0, 8)}`}`
    return await this.#f.gate.guard('restoreBackup', 'backup:restore', backupObject(backup), `backup:${backup.id}`, async () => await this.#f.backups.restore(backupId, options), { into })
  }

  /**
   * refusedArguments for a call on the backup `backupId` that its options refused: checked on the
   * backup's volume, looked up as the call would (an id that names nothing is checked as every
   * namespace's, see findBackup; a backup that cannot be read, too).
   */
  async #refusedArguments (action: string, verb: Verb, backupId: string, options: { target?: BackupTargetRef } | null | undefined, err: unknown): Promise<unknown> {
    let found: Backup | undefined
    try {
      found = await findBackup(this.#f.gate, this.#f.backups, action, verb, backupId, { target: options?.target })
    } catch (lookup) {
      if (errorCode(lookup) === 'PERMISSION_DENIED') return lookup
    }
    return await this.#f.gate.refusedArguments(action, verb, found === undefined ? EVERY_VOLUME : backupObject(found), `backup:${found?.id ?? String(backupId).slice(0, 256)}`, err)
  }

  async createBackupPolicy (policy: BackupPolicyOptions): Promise<BackupPolicy> {
    this.#f.state.assertOpen()
    // Its runs back up as the application, wherever the policy says: naming a target takes "admin"
    // here, as it does for createBackup.
    await this.#f.gate.checkTarget('createBackupPolicy', policy as { target?: unknown } | undefined)
    return await this.#f.gate.guard('createBackupPolicy', 'backup:schedule', undefined, `backup-policy:${String((policy as { name?: unknown })?.name)}`, async () => await this.#f.scheduler.create(policy))
  }

  async listBackupPolicies (): Promise<BackupPolicy[]> {
    this.#f.state.assertOpen()
    await this.#f.gate.check('listBackupPolicies', 'backup:read', undefined, 'backup-policies')
    return this.#f.scheduler.list()
  }

  async getBackupPolicy (name: string): Promise<BackupPolicy> {
    this.#f.state.assertOpen()
    await this.#f.gate.check('getBackupPolicy', 'backup:read', undefined, `backup-policy:${String(name)}`)
    return this.#f.scheduler.get(name)
  }

  async deleteBackupPolicy (name: string): Promise<void> {
    this.#f.state.assertOpen()
    await this.#f.gate.guard('deleteBackupPolicy', 'backup:schedule', undefined, `backup-policy:${String(name)}`, async () => { await this.#f.scheduler.delete(name) })
  }

  setBackupPolicyHooks (name: string, hooks: BackupHooks | undefined): void {
    this.#f.state.assertOpen()
    this.#f.gate.checkSync('setBackupPolicyHooks', 'backup:schedule', undefined, `backup-policy:${String(name)}`)
    this.#f.scheduler.setHooks(name, hooks)
  }

  async runBackupPolicy (name: string): Promise<BackupPolicyRun> {
    this.#f.state.assertOpen()
    return await this.#f.gate.guard('runBackupPolicy', 'backup:schedule', undefined, `backup-policy:${String(name)}`, async () => (await this.#f.scheduler.run(name, false))[0] as BackupPolicyRun)
  }

  async runDueBackupPolicies (): Promise<BackupPolicyRun[]> {
    this.#f.state.assertOpen()
    const denied = this.#f.gate.check('runDueBackupPolicies', 'backup:schedule', undefined, 'backup-policies')
    if (denied !== undefined) await denied
    return await this.#f.scheduler.runDue()
  }
}
