// The seeded run of test/encryption-model-fuzz.test.ts: the open, closes and reopens (with the key
// configuration right, or wrong in one of the documented ways and then put right), bad requests,
// the step chooser and the final checks.

import assert from 'node:assert/strict'
import { chmod, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { ExternalKeyProvider, GalleonError, GalleonFS, WriteConcern, type GalleonErrorCode } from '../../src/index.js'
import { generateKey, wrapKey } from '../../src/crypto/keys.js'
import { writeKmsScript } from './crypto-fuzz-support.js'
import { MAX_VOLUMES, SEALED, type Misconfiguration, type ModelVolume } from './crypto-fuzz-model.js'
import { CryptoFuzzOps } from './crypto-fuzz-ops.js'

/** One seeded run: open() it, step() it, finish() it; `log` holds the steps so far (for a failure). */
export class EncryptionFuzz extends CryptoFuzzOps {
  // ---------------------------------------------------------------- close and reopen

  async reopen (): Promise<void> {
    this.say(`close and reopen (${this.mode})`)
    await this.fs.close()
    this.g = undefined
    this.g = await GalleonFS.open(this.options())
    this.count('reopen')
    // A re-encryption cut short by the close resumes now.
    await this.checkAll()
  }

  /** The ways the current provider can be misconfigured at an open: each prepares the files and says how to fix them. */
  misconfigurations (): Array<() => Promise<Misconfiguration>> {
    const right = this.options()
    const aside = async (path: string): Promise<() => Promise<void>> => {
      await rename(path, `${path}.aside`)
      return async () => { await rename(`${path}.aside`, path) }
    }
    const nothing = async (): Promise<void> => {}
    const stranger = async (): Promise<Misconfiguration> => {
      const other = this.newExternalKey()
      return { what: 'another KMS key', options: { ...right, passphrase: undefined, passphraseCost: undefined, keyProvider: this.externalProvider(other.kek, other.keyId) }, useCode: 'DECRYPTION_FAILED', createCodes: ['DECRYPTION_FAILED'], fix: nothing }
    }
    const internal = async (): Promise<Misconfiguration> => ({ what: 'no key provider (internal)', options: { ...right, passphrase: undefined, passphraseCost: undefined, keyProvider: undefined }, useCode: 'DECRYPTION_FAILED', createCodes: ['DECRYPTION_FAILED'], fix: nothing })
    const master = this.masterPath
    switch (this.mode) {
      case 'internal':
        return [
          async () => ({
            what: 'master.key missing', options: right, useCode: 'DECRYPTION_FAILED', createCodes: ['DECRYPTION_FAILED'],
            check: async () => { await assert.rejects(stat(master), { code: 'ENOENT' }, 'no new master.key is made') },
            fix: await aside(master)
          }),
          async () => {
            const saved = await readFile(master, 'utf8')
            const wrong = randomBytes(32).toString('hex') + '\n'
            await rm(master)
            await writeFile(master, wrong, { mode: 0o600 })
            return {
              what: 'another master.key', options: right, useCode: 'DECRYPTION_FAILED', createCodes: ['DECRYPTION_FAILED'],
              check: async () => { assert.equal(await readFile(master, 'utf8'), wrong, 'nothing rotated the wrong key file') },
              fix: async () => { await rm(master); await writeFile(master, saved, { mode: 0o600 }); await chmod(master, 0o600) }
            }
          },
          async () => {
            await chmod(master, 0o644)
            return { what: 'master.key readable by others', options: right, useCode: 'INVALID_ARGUMENT', createCodes: ['INVALID_ARGUMENT'], fix: async () => { await chmod(master, 0o600) } }
          },
          stranger
        ]
      case 'passphrase':
        return [
          async () => ({ what: 'wrong passphrase', options: { ...right, passphrase: 'not the fuzz passphrase' }, openCode: 'DECRYPTION_FAILED', fix: nothing }),
          async () => ({ what: 'passphrase.salt missing', options: right, openCode: 'DECRYPTION_FAILED', fix: await aside(this.saltPath) }),
          internal,
          stranger
        ]
      case 'command': {
        const { keyFile, keyId } = this.command as { keyFile: string, keyId: string }
        return [
          // A KMS that cannot wrap at all makes a new key BACKEND_UNAVAILABLE; one that holds another key, DECRYPTION_FAILED.
          async () => ({ what: 'the KMS key file missing', options: right, useCode: 'DECRYPTION_FAILED', createCodes: ['BACKEND_UNAVAILABLE'], fix: await aside(keyFile) }),
          async () => {
            const wrongFile = join(this.kmsDir, 'wrong.key')
            await writeFile(wrongFile, randomBytes(32).toString('hex') + '\n')
            return { what: 'the KMS with another key', options: { ...right, keyProvider: this.commandProvider(wrongFile, keyId) }, useCode: 'DECRYPTION_FAILED', createCodes: ['DECRYPTION_FAILED'], fix: nothing }
          },
          internal
        ]
      }
      case 'external':
        return [stranger, internal]
    }
  }

  /**
   * Closes, reopens with the key configuration wrong in one way (refused as documented: nothing of
   * an encrypted volume is read or written, plain volumes work, nothing new is wrapped under the
   * wrong key), then with it put right: every byte reads back.
   */
  async misconfiguredReopen (): Promise<void> {
    const encrypted = [...this.volumes.values()].filter((v) => v.encrypted)
    // A storage without encrypted volumes takes any key: nothing to refuse.
    if (encrypted.length === 0) return
    await this.fs.close()
    this.g = undefined
    const wrong = await (this.pick(this.misconfigurations()) as () => Promise<Misconfiguration>)()
    this.say(`reopen with ${wrong.what} (${this.mode})`)
    this.count(`misconfigured: ${wrong.what}`)
    if (wrong.openCode !== undefined) {
      await this.refused(`open with ${wrong.what}`, wrong.openCode, async () => { const g = await GalleonFS.open(wrong.options); await g.close() })
    } else {
      const g = await GalleonFS.open(wrong.options)
      this.g = g
      try {
        for (const volume of this.volumes.values()) {
          if (!volume.encrypted) {
            await this.checkVolume(volume)
            continue
          }
          const code = wrong.useCode as GalleonErrorCode
          // Blocks holding data are refused (a block never written reads as zeros: no key is needed to know that).
          const written = (image: Uint8Array): number | undefined => {
            const at = image.findIndex((byte) => byte !== 0)
            return at < 0 ? undefined : Math.floor(at / this.bs)
          }
          const block = written(volume.data)
          if (block !== undefined) {
            await this.refused(`read ${volume.name} with ${wrong.what}`, code, async () => await g.read(volume.name, 0, volume.data.byteLength))
            await this.refused(`readBlock ${volume.name} ${block} with ${wrong.what}`, code, async () => await g.readBlock(volume.name, block))
          }
          await this.refused(`write ${volume.name} with ${wrong.what}`, code, async () => await g.writeBlock(volume.name, 0, new Uint8Array(this.bs).fill(7)))
          if (this.chance(0.3)) await this.refused(`rotateVolumeKey ${volume.name} with ${wrong.what}`, code, async () => await g.rotateVolumeKey(volume.name, { wait: true }))
          for (const [snapshot, image] of volume.snapshots) {
            const at = written(image)
            if (at === undefined) continue
            await this.refused(`read ${volume.name}@${snapshot} with ${wrong.what}`, code, async () => await g.read({ volume: volume.name, snapshot }, at * this.bs, this.bs))
            break
          }
          const info = await g.getVolumeEncryption(volume.name)
          assert.equal(typeof info.unavailable, 'string', `${volume.name}: getVolumeEncryption says why its keys are unavailable`)
        }
        // A plain volume still takes writes.
        const plain = [...this.volumes.values()].find((v) => !v.encrypted)
        if (plain !== undefined) {
          await this.startWrite(plain)
          await this.checkVolume(plain)
        }
        const names = (await g.listVolumes()).map((v) => v.name).sort()
        let error: unknown
        try {
          await g.createVolume({ name: 'never', sizeBytes: 4 * this.bs, storageClass: SEALED })
        } catch (err) {
          error = err
        }
        assert.ok(error instanceof GalleonError && (wrong.createCodes ?? []).includes(error.code), `a new encrypted volume with ${wrong.what}: expected ${String(wrong.createCodes)}, got ${String(error)}`)
        assert.deepEqual((await g.listVolumes()).map((v) => v.name).sort(), names, 'a refused create leaves no volume')
        // Nor are the keys moved away from the right KEK by a provider that cannot open them.
        const elsewhere = this.newExternalKey()
        error = undefined
        try {
          await g.rotateKeyEncryptionKey({ keyProvider: this.externalProvider(elsewhere.kek, elsewhere.keyId) })
        } catch (err) {
          error = err
        }
        assert.ok(error instanceof GalleonError && (wrong.createCodes ?? []).includes(error.code), `a KEK move with ${wrong.what}: expected ${String(wrong.createCodes)}, got ${String(error)}`)
        await wrong.check?.()
      } finally {
        this.g = undefined
        await g.close()
      }
    }
    await wrong.fix()
    this.say('reopen with the configuration put right')
    this.g = await GalleonFS.open(this.options())
    await this.checkAll()
  }

  // ---------------------------------------------------------------- bad requests

  async badRequest (volume: ModelVolume): Promise<void> {
    const cases: Array<() => Promise<void>> = [
      async () => { await this.refused('a WriteReplicated write without replication', 'WRITE_CONCERN_UNSATISFIED', async () => await this.fs.writeBlock(volume.name, 0, new Uint8Array(this.bs).fill(9), WriteConcern.WriteReplicated), volume) },
      async () => { await this.refused('a WriteDistributed write without replication', 'WRITE_CONCERN_UNSATISFIED', async () => await this.fs.write(volume.name, 1, new Uint8Array(10).fill(9), WriteConcern.WriteDistributed), volume) },
      async () => { await this.refused('rotateKeyEncryptionKey with a keyProvider that is not one', 'INVALID_ARGUMENT', async () => await this.fs.rotateKeyEncryptionKey({ keyProvider: { name: 'x' } as never })) },
      async () => { await this.refused('rotateKeyEncryptionKey with a keyProvider and a passphrase', 'INVALID_ARGUMENT', async () => await this.fs.rotateKeyEncryptionKey({ keyProvider: this.externalProvider(generateKey(), 'both'), passphrase: 'long enough passphrase' })) },
      async () => {
        // A KMS that wraps but may not unwrap: refused before anything is re-wrapped.
        const kek = generateKey()
        const encryptOnly = new ExternalKeyProvider({ keyId: 'encrypt-only', wrap: async (dek, context) => wrapKey(kek, dek, context), unwrap: async () => { throw new Error('AccessDenied: kms:Decrypt') } })
        await this.settleAll()
        await this.refused('rotateKeyEncryptionKey to a provider that cannot unwrap', 'BACKEND_UNAVAILABLE', async () => await this.fs.rotateKeyEncryptionKey({ keyProvider: encryptOnly }))
      },
      async () => {
        if (this.mode === 'passphrase') await this.refused('a passphrase change to a short passphrase', 'INVALID_ARGUMENT', async () => await this.fs.rotateKeyEncryptionKey({ passphrase: 'short' }))
        else await this.refused(`a passphrase change with the ${this.mode} provider`, 'INVALID_ARGUMENT', async () => await this.fs.rotateKeyEncryptionKey({ passphrase: 'long enough passphrase' }))
      },
      async () => {
        if (this.mode === 'command' || this.mode === 'external') await this.refused(`a KEK rotation of the ${this.mode} provider without a new provider`, 'INVALID_ARGUMENT', async () => await this.fs.rotateKeyEncryptionKey())
      },
      async () => {
        const backup = this.pick(this.backups.filter((b) => b.encrypted && this.restorable(b)))
        const plain = backup === undefined ? undefined : this.pick([...this.volumes.values()].filter((v) => !v.encrypted && v.data.byteLength >= backup.image.byteLength))
        if (backup !== undefined && plain !== undefined) await this.refused(`restore encrypted ${backup.id} over plain ${plain.name}`, 'INVALID_ARGUMENT', async () => await this.fs.restoreBackup(backup.id, { volume: plain.name }), plain)
      }
    ]
    await (this.pick(cases) as () => Promise<void>)()
    for (const v of this.volumes.values()) await this.checkEncryption(v)
  }

  // ---------------------------------------------------------------- the run

  async open (): Promise<void> {
    this.storagePath = await this.place()
    this.target = await this.place()
    this.kmsDir = await this.place()
    this.kmsScript = await writeKmsScript(this.kmsDir)
    if (this.mode === 'internal') this.internal = { current: this.label('i'), holds: new Set() }
    if (this.mode === 'passphrase') this.pass = { passphrase: 'fuzz passphrase 0', current: this.label('p'), holds: new Set() }
    if (this.mode === 'command') this.command = await this.newCommandKey()
    if (this.mode === 'external') this.external = this.newExternalKey()
    this.current = this.internal?.current ?? this.pass?.current ?? [...this.kekIds.keys()][0] as string
    this.internal?.holds.add(this.current)
    this.pass?.holds.add(this.current)
    this.say(`open ${this.backend}, ${this.bs}-byte blocks, ${this.mode} provider (${this.current})`)
    this.g = await GalleonFS.open(this.options())
    await this.fs.createStorageClass({ name: SEALED, provisioner: 'galleonfs', parameters: { encryption: 'true', replication: '1' } })
    await this.create(true)
    await this.create(false)
  }

  /** Milliseconds spent per kind of step (reported as a diagnostic: where a run's time goes). */
  readonly times = new Map<string, number>()

  async step (): Promise<void> {
    const started = Date.now()
    const roll = this.int(100)
    await this.#step(roll)
    const kind = ['write', 'trim', 'read', 'expand', 'snapshot', 'deleteSnapshot', 'revert', 'clone', 'deleteVolume', 'create', 'rotateVolumeKey', 'rotateKek', 'backup', 'restore', 'migrate', 'reopen', 'misconfigured', 'bad'][[20, 25, 30, 33, 39, 42, 45, 50, 53, 57, 66, 71, 78, 83, 88, 91, 95, 100].findIndex((limit) => roll < limit)] as string
    this.times.set(kind, (this.times.get(kind) ?? 0) + Date.now() - started)
  }

  async #step (roll: number): Promise<void> {
    const volume = this.pick([...this.volumes.values()]) as ModelVolume
    let check = true
    if (roll < 20) await this.write(volume)
    else if (roll < 25) await this.trim(volume)
    else if (roll < 30) { await this.read(volume); check = false } else if (roll < 33) await this.expand(volume)
    else if (roll < 39) await this.snapshot(volume)
    else if (roll < 42) await this.deleteSnapshot(volume)
    else if (roll < 45) await this.revert(volume)
    else if (roll < 50) await this.clone(volume)
    else if (roll < 53) { await this.deleteVolume(volume); check = false } else if (roll < 57) {
      if (this.volumes.size < MAX_VOLUMES) await this.create(this.chance(0.6))
      check = false
    } else if (roll < 66) await this.rotateVolumeKey(volume)
    else if (roll < 71) await this.rotateKek()
    else if (roll < 78) await this.backup(volume)
    else if (roll < 83) {
      const backup = this.pick(this.backups)
      if (backup !== undefined) await this.restore(backup, this.chance(0.4))
    } else if (roll < 88) await this.migrate(volume)
    else if (roll < 91) await this.reopen()
    else if (roll < 95) await this.misconfiguredReopen()
    else await this.badRequest(volume)
    if (check && this.volumes.has(volume.name)) await this.checkVolume(volume, roll >= 33)
  }

  async finish (): Promise<void> {
    this.say('finish')
    await this.settleAll()
    await this.checkAll()
    for (const backup of this.backups) await this.restore(backup, false)
    await this.scan()
    await this.fs.close()
    this.g = undefined
    // Everything is on disk now: no secret marker, and the plain volumes' markers are found.
    await this.scan(true)
  }
}
