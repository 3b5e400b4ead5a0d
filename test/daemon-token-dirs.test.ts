// The daemon leaves its API token for the CLI in a runtime directory. Every directory above it, up
// to the root, must be one no other user can change (owned by this user or root, and not writable
// by group or others unless sticky, as /tmp is): a world-writable directory two levels up let
// another user rename the branch away and plant its own (only the parent was checked before).

import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { chmod, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { writeRuntimeToken } from '../examples/daemon-token.js'

const root = await mkdtemp(join(tmpdir(), 'galleon-token-dirs-'))
after(async () => { await rm(root, { recursive: true, force: true }) })
const TOKEN = 'a'.repeat(64)

describe('the runtime token directory', () => {
  it('is refused below a directory others may change, at any level, and taken below safe ones', async () => {
    const open = join(root, 'open')
    await mkdir(join(open, 'mine'), { recursive: true })
    await chmod(open, 0o777)
    const path = join(open, 'mine', 'galleonfs', 'token-x')
    await assert.rejects(writeRuntimeToken(path, TOKEN), (err: Error) => {
      assert.match(err.message, new RegExp(`${open}, above the runtime directory ${join(open, 'mine')}, .*can be changed by another user \\(owner uid \\d+, mode 777\\); set XDG_RUNTIME_DIR`))
      return true
    })
    await assert.rejects(stat(path), /ENOENT/, 'no token was written')
    // Sticky, as /tmp: only owners may rename or delete there.
    await chmod(open, 0o1777)
    await writeRuntimeToken(path, TOKEN)
    assert.equal((await readFile(path, 'utf8')).trim(), TOKEN)
    assert.equal((await stat(path)).mode & 0o777, 0o600)
    // Group-writable, not sticky, at the level just above the runtime directory.
    const shared = join(root, 'shared')
    await mkdir(shared)
    await chmod(shared, 0o775)
    await assert.rejects(writeRuntimeToken(join(shared, 'galleonfs', 'token-y'), TOKEN), /the runtime directory .*shared, where the API token .*mode 775/)
  })
})
