// Certificates for TLS tests, made with the openssl command: a CA and a stranger CA, a server
// certificate for 127.0.0.1 and client certificates signed by each, with client directories in
// the layout libnbd (tls-certificates=) and qemu (tls-creds-x509 dir=) read.

import { execFile } from 'node:child_process'
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'

const exec = promisify(execFile)

/** What makeCertificates made: PEM texts by name, and client directories. */
export interface TestCertificates {
  /**
   * ca-cert, server-cert, server-key, client-cert, client-key; stranger-ca-cert and what it signed:
   * stranger-cert, stranger-key (a client), stranger-server-cert, stranger-server-key (a server for
   * 127.0.0.1); their files are `<name>.pem` in the directory.
   */
  readonly pem: Readonly<Record<string, string>>
  /** ca-cert.pem, and client-cert.pem and client-key.pem of a client the CA signed. */
  readonly clientDir: string
  /** The same, with a client certificate another CA signed. */
  readonly strangerDir: string
  /** ca-cert.pem only (a client without a certificate). */
  readonly caOnlyDir: string
}

/** Makes the certificates in `dir` (EC P-256 keys, valid for a day). */
export async function makeCertificates (dir: string): Promise<TestCertificates> {
  const openssl = async (args: string[]): Promise<void> => { await exec('openssl', args, { cwd: dir }) }
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  for (const ca of ['ca', 'stranger-ca']) await openssl(['req', '-x509', ...ec, '-keyout', `${ca}-key.pem`, '-out', `${ca}-cert.pem`, '-days', '1', '-subj', `/CN=${ca}`])
  const sign = async (name: string, ca: string, extensions: string): Promise<void> => {
    await openssl(['req', ...ec, '-keyout', `${name}-key.pem`, '-out', `${name}.csr`, '-subj', `/CN=${name}`])
    await writeFile(join(dir, `${name}.ext`), extensions)
    await openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}-cert.pem`, '-CAkey', `${ca}-key.pem`, '-CAcreateserial', '-out', `${name}-cert.pem`, '-days', '1', '-extfile', `${name}.ext`])
  }
  await sign('server', 'ca', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n')
  await sign('client', 'ca', 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n')
  await sign('stranger', 'stranger-ca', 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n')
  await sign('stranger-server', 'stranger-ca', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n')
  const pem: Record<string, string> = {}
  for (const name of ['ca-cert', 'stranger-ca-cert', 'server-cert', 'server-key', 'client-cert', 'client-key', 'stranger-cert', 'stranger-key', 'stranger-server-cert', 'stranger-server-key']) pem[name] = await readFile(join(dir, `${name}.pem`), 'utf8')
  const layout = async (name: string, cert: string | undefined): Promise<string> => {
    const at = join(dir, name)
    await mkdir(at)
    await copyFile(join(dir, 'ca-cert.pem'), join(at, 'ca-cert.pem'))
    if (cert !== undefined) {
      await copyFile(join(dir, `${cert}-cert.pem`), join(at, 'client-cert.pem'))
      await copyFile(join(dir, `${cert}-key.pem`), join(at, 'client-key.pem'))
    }
    return at
  }
  return { pem, clientDir: await layout('client-x509', 'client'), strangerDir: await layout('stranger-x509', 'stranger'), caOnlyDir: await layout('ca-only-x509', undefined) }
}
