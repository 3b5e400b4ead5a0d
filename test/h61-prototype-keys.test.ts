// h61 security audit: keys named like Object.prototype's members (__proto__, constructor, toString,
// ...) in storage class and pool definitions, which arrive from JSON or YAML files and from the
// daemon's API. Unknown fields are refused by name; these must be too, never silently dropped.

import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { parse as parseYaml } from 'yaml'
import { GalleonError, GalleonFS } from '../src/index.js'

const INHERITED = ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf']

const refusedNaming = (key: string) => (err: unknown): boolean => err instanceof GalleonError && err.code === 'INVALID_ARGUMENT' && err.message.includes(key)

// Defect: parseStorageClass (src/volumes/storage-classes.ts:67) and parsePool (src/volumes/pools.ts:131)
// look a field up as FIELD_ALIASES[key] in a plain object, so an inherited name finds
// Object.prototype's member instead of undefined: the "unknown field" refusal is skipped and the
// value is filed under a key nothing reads. A class file with `__proto__: { parameters: ... }` or a
// stray `constructor:` is accepted, and the class made without what it said.
describe('h61: inherited names as fields of storage classes and pools', () => {
  it('a storage class with a field named like an Object.prototype member is refused naming it', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      for (const key of INHERITED) {
        const definition = JSON.parse(`{"name":"c-${key.toLowerCase().replace(/_/g, '')}","${key}":{"parameters":{"encryption":"true"}}}`) as Record<string, unknown>
        await assert.rejects(g.createStorageClass(definition), refusedNaming(key), `field ${key}`)
      }
      // As the CLI reads a YAML file (the yaml package keeps __proto__ as an own key).
      const yaml = parseYaml('name: from-yaml\n__proto__:\n  parameters:\n    encryption: "true"\n') as Record<string, unknown>
      assert.ok(Object.hasOwn(yaml, '__proto__'))
      await assert.rejects(g.createStorageClass(yaml), refusedNaming('__proto__'), 'YAML __proto__')
      assert.deepEqual((await g.listStorageClasses()).filter((c) => !c.builtIn).map((c) => c.name), [], 'no class was made')
    } finally {
      await g.close()
    }
  })

  it('a pool with a field named like an Object.prototype member is refused naming it', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      for (const key of INHERITED) {
        const definition = JSON.parse(`{"name":"p${INHERITED.indexOf(key)}","capacityBytes":"1G","${key}":{"x":1}}`) as Record<string, unknown>
        await assert.rejects(g.createPool(definition as never), refusedNaming(key), `field ${key}`)
      }
      assert.deepEqual(await g.listPools(), [], 'no pool was made')
    } finally {
      await g.close()
    }
  })

  it('held: parameter and label keys named like Object.prototype members pollute nothing', async () => {
    const g = await GalleonFS.open({ inMemory: true })
    try {
      await assert.rejects(g.createStorageClass(JSON.parse('{"name":"odd","parameters":{"__proto__":"x"}}') as Record<string, unknown>), refusedNaming('__proto__'))
      await assert.rejects(g.createVolume(JSON.parse('{"name":"v2","sizeBytes":4096,"__proto__":{"storageClass":"encrypted-storage"}}') as never), refusedNaming('__proto__'))
      const volume = await g.createVolume(JSON.parse('{"name":"v1","sizeBytes":4096,"storageClass":"fast-local-ssd","labels":{"constructor":"x","toString":"y"}}') as never)
      assert.deepEqual({ ...volume.labels }, { constructor: 'x', toString: 'y' })
      assert.equal(({} as Record<string, unknown>).polluted, undefined)
      assert.equal(typeof ({}).toString, 'function')
    } finally {
      await g.close()
    }
  })
})
