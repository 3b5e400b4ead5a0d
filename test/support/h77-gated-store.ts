// A driver module for test/h77-daemon-listen-first.test.ts, loaded by the daemon from [drivers]
// modules: a file block store whose creation, inside GalleonFS.open() (the storage path is made,
// nothing opened yet), waits at a gate. It writes `<gate>.waiting` when it gets there and goes on
// once the file `<gate>` exists; a gate holding "fail" makes the open fail instead.

import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { registerDriver } from '../../src/index.js'
import { FileBlockStore } from '../../backends/file/index.js'

registerDriver<'blockStore', { gate: string }>({
  kind: 'blockStore',
  name: 'h77-gated',
  description: 'a file block store that waits at a gate file before it is made',
  options: { gate: { type: 'string', required: true } },
  create: async (options, context) => {
    await writeFile(`${options.gate}.waiting`, String(process.pid))
    for (;;) {
      const text = await readFile(options.gate, 'utf8').catch(() => undefined)
      if (text?.trim() === 'fail') throw new Error('the test\'s gate told the block store to fail')
      if (text !== undefined) break
      await sleep(20)
    }
    return new FileBlockStore({ location: join(context.storagePath as string, 'h77-blocks') })
  }
})
