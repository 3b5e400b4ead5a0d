// Tests of storage class parsing and the capability check.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { parseStorageClass, assertClassSupported, BUILT_IN_STORAGE_CLASSES, classReplicas } from '../src/volumes/storage-classes.js'

const seedJson = {
  name: 'ultra-fast-ssd',
  provisioner: 'galleonfs.io/nvme-ssd',
  parameters: { disk_type: 'nvme', fs_type: 'xfs', encryption: 'false', raid_level: '1' },
  reclaim_policy: 'Delete',
  volume_binding_mode: 'Immediate',
  allowed_topologies: ['zone-a', 'zone-b'],
  mount_options: ['noatime', 'nodiratime', 'nobarrier']
}

describe('parseStorageClass', () => {
  it('accepts a snake_case definition as written in JSON/YAML files', () => {
    const parsed = parseStorageClass(seedJson)
    assert.equal(parsed.name, 'ultra-fast-ssd')
    assert.equal(parsed.reclaimPolicy, 'Delete')
    assert.equal(parsed.volumeBindingMode, 'Immediate')
    assert.deepEqual(parsed.allowedTopologies, ['zone-a', 'zone-b'])
    assert.deepEqual(parsed.mountOptions, ['noatime', 'nodiratime', 'nobarrier'])
    assert.equal(parsed.parameters.raid_level, '1')
    assert.equal(parsed.builtIn, false)
  })
  it('accepts camelCase and fills defaults', () => {
    const parsed = parseStorageClass({ name: 'plain', reclaimPolicy: 'Retain' })
    assert.equal(parsed.reclaimPolicy, 'Retain')
    assert.equal(parsed.volumeBindingMode, 'Immediate')
    assert.deepEqual(parsed.parameters, {})
  })
  it('converts number and boolean parameters to strings', () => {
    assert.deepEqual(parseStorageClass({ name: 'x', parameters: { replication: 2, encryption: false } }).parameters, { replication: '2', encryption: 'false' })
  })
  const bad: Array<[string, unknown]> = [
    ['not an object', 'fast'],
    ['an array', []],
    ['null', null],
    ['missing name', { provisioner: 'p' }],
    ['uppercase name', { name: 'Fast' }],
    ['name with space', { name: 'a b' }],
    ['unknown field', { name: 'a', colour: 'red' }],
    ['field given twice', { name: 'a', reclaimPolicy: 'Delete', reclaim_policy: 'Delete' }],
    ['bad reclaim policy', { name: 'a', reclaim_policy: 'Recycle' }],
    ['bad binding mode', { name: 'a', volume_binding_mode: 'Later' }],
    ['parameters not an object', { name: 'a', parameters: 'x' }],
    ['parameter value an object', { name: 'a', parameters: { x: {} } }],
    ['encryption not boolean text', { name: 'a', parameters: { encryption: 'yes' } }],
    ['unknown cipher', { name: 'a', parameters: { encryption_algorithm: 'DES' } }],
    ['replication zero', { name: 'a', parameters: { replication: '0' } }],
    ['replication text', { name: 'a', parameters: { replication: 'three' } }],
    ['topologies not a list', { name: 'a', allowed_topologies: 'zone-a' }],
    ['mount options with empty string', { name: 'a', mount_options: [''] }],
    ['empty provisioner', { name: 'a', provisioner: '' }]
  ]
  for (const [what, input] of bad) {
    it(`rejects ${what} with INVALID_ARGUMENT`, () => {
      assert.throws(() => parseStorageClass(input), { code: 'INVALID_ARGUMENT' })
    })
  }
})

describe('built-in classes and capabilities', () => {
  it('has fast-local-ssd and encrypted-storage as DESIGN.md describes', () => {
    const [fast, encrypted] = BUILT_IN_STORAGE_CLASSES
    assert.equal(fast?.name, 'fast-local-ssd')
    assert.equal(fast?.reclaimPolicy, 'Delete')
    assert.equal(fast?.volumeBindingMode, 'Immediate')
    assert.equal(fast?.parameters.encryption, 'false')
    assert.equal(encrypted?.name, 'encrypted-storage')
    assert.equal(encrypted?.parameters.encryption_algorithm, 'AES-256-GCM')
    assert.equal(classReplicas(encrypted!), 3)
    assert.equal(encrypted?.reclaimPolicy, 'Retain')
    assert.equal(encrypted?.volumeBindingMode, 'WaitForFirstConsumer')
  })
  it('accepts encryption, refuses extra replicas outside a cluster naming the fix', () => {
    const encrypted = BUILT_IN_STORAGE_CLASSES[1]!
    assert.doesNotThrow(() => assertClassSupported(encrypted, 1))
    assert.throws(() => assertClassSupported(encrypted, 3), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /3 replicas/.test(err.message) && /cluster/.test(err.message))
    assert.doesNotThrow(() => assertClassSupported(encrypted, 3, true))
    const fast = BUILT_IN_STORAGE_CLASSES[0]!
    assert.throws(() => assertClassSupported(fast, 2), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /2 replicas/.test(err.message))
    assert.doesNotThrow(() => assertClassSupported(fast, 1))
  })
})
