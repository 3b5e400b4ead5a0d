// Defects found reviewing the commits 897008a..766825b (task r5), each a test that failed before
// its fix: replicated key-rotation tokens in records written by both versions, and the runtime
// token directory below a symlinked ancestor.

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { chmod, mkdir, mkdtemp, rm, stat, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MemoryTransport } from '../backends/memory/index.js'
import { recordKey } from '../src/replication/records.js'
import { WriteConcern } from '../src/index.js'
import { writeRuntimeToken } from '../examples/daemon-token.js'
import { until } from './support/wait.js'
import { BS, allInSync, block, diskCluster } from './support/disk-cluster.js'

const kit = diskCluster('galleon-review-r5-')
const root = await mkdtemp(join(tmpdir(), 'galleon-review-r5-'))
after(async () => { await rm(root, { recursive: true, force: true }) })

describe('replicated key rotation tokens across versions', () => {
  it('a token an earlier-version primary counted (keyRotationToken beside keyRotationTokens) survives the next rotation', { timeout: 60_000 }, async () => {
    const { network, coordinators, nodes } = await kit.cluster(2)
    for (const node of nodes) await node.g.createStorageClass({ name: 'secret', parameters: { replication: '2', encryption: 'true' } })
    const [n1] = nodes as [typeof nodes[0], typeof nodes[0]]
    const volume = await n1.g.createVolume({ name: 'keys', sizeBytes: 16 * BS, storageClass: 'secret' })
    await n1.g.write('keys', 0, block(1), WriteConcern.WriteReplicated)
    await until('both copies in sync', async () => await allInSync(n1.g, 'keys', 2), 20_000)
    // Forwarded rotateVolumeKey calls with tokens of our choosing, as another node sends them.
    const probe = new MemoryTransport({ network, nodeId: 'probe' })
    const rotate = async (token: string): Promise<number> => {
      // One rotation at a time: a rotation asked for while the last one re-encrypts is refused (BUSY).
      await until('no re-encryption under way on n1', async () => (await n1.g.getVolumeEncryption('keys')).rotation === undefined, 20_000)
      const reply = await probe.request('n1', { kind: 'repl:io', header: { volumeId: volume.id, op: 'rotateVolumeKey', token } }, { timeoutMs: 15_000 })
      return (reply.header.encryption as { keyGeneration: number }).keyGeneration
    }
    const coordinator = coordinators.coordinator()
    const spec = async (): Promise<Record<string, unknown>> => JSON.parse((await coordinator.get(recordKey(volume.id)))?.value ?? '{}').spec
    try {
      assert.equal(await rotate('token-a'), 1)
      assert.deepEqual((await spec()).keyRotationTokens, ['token-a'])
      // A primary of the earlier version counts rotation B: it knows only keyRotationToken, and
      // keeps the rest of the spec as it found it (keyRotationTokens included).
      const entry = await coordinator.get(recordKey(volume.id))
      const record = JSON.parse(entry?.value ?? '{}')
      record.spec = { ...record.spec, keyGeneration: 2, keyRotationToken: 'token-b' }
      assert.notEqual(await coordinator.put(recordKey(volume.id), JSON.stringify(record), { expectRevision: entry?.revision }), undefined)
      await until('n1 took rotation 2 from the record', async () => (await n1.g.getVolumeEncryption('keys')).keyGeneration === 2, 20_000)
      // This version's primary counts rotation C; then B's call is repeated (its answer was lost).
      assert.equal(await rotate('token-c'), 3)
      const after = await spec()
      assert.equal(await rotate('token-b'), 3, `the repeat of B answers without rotating (record: ${JSON.stringify(after)})`)
      assert.deepEqual(after.keyRotationTokens, ['token-a', 'token-b', 'token-c'])
      // Readers of the earlier version find the last forwarded rotation's token where they look.
      assert.equal(after.keyRotationToken, 'token-c')
      assert.equal(await rotate('token-a'), 3, 'and so does a repeat of A')
      await until('n1 has 3 rotations', async () => (await n1.g.getVolumeEncryption('keys')).keyGeneration === 3, 20_000)
      assert.deepEqual(await n1.g.read('keys', 0, BS), block(1))
    } finally {
      await probe.close()
      await coordinator.close()
    }
  })
})

describe('the runtime token directory below a symlink', () => {
  it('is refused when a directory on the real path, above the link target, can be changed by another user', async () => {
    // open/ is world-writable (not sticky): whoever may write there can rename real/ away and
    // put a directory of its own in its place. The token path reaches real/ through a link.
    const open = join(root, 'open')
    await mkdir(join(open, 'real'), { recursive: true })
    await chmod(open, 0o777)
    await chmod(join(open, 'real'), 0o755)
    const safe = join(root, 'safe')
    await mkdir(safe, { mode: 0o755 })
    await symlink(join(open, 'real'), join(safe, 'link'))
    const path = join(safe, 'link', 'galleonfs', 'token-x')
    await assert.rejects(writeRuntimeToken(path, 'a'.repeat(64)), (err: Error) => {
      assert.match(err.message, new RegExp(`${open}, above the runtime directory .*can be changed by another user \\(owner uid \\d+, mode 777\\); set XDG_RUNTIME_DIR`))
      return true
    })
    await assert.rejects(stat(path), /ENOENT/, 'no token was written')
    // The same branch, with open/ sticky (as /tmp): taken.
    await chmod(open, 0o1777)
    await writeRuntimeToken(path, 'a'.repeat(64))
    assert.equal((await stat(path)).mode & 0o777, 0o600)
    // A world-writable directory holding the link itself: whoever may write there can replace the link.
    const linkHolder = join(root, 'link-holder')
    await mkdir(linkHolder)
    await chmod(linkHolder, 0o777)
    await symlink(join(open, 'real'), join(linkHolder, 'link'))
    await assert.rejects(writeRuntimeToken(join(linkHolder, 'link', 'galleonfs', 'token-y'), 'a'.repeat(64)), new RegExp(`${linkHolder}, above the runtime directory .*mode 777`))
  })
})
