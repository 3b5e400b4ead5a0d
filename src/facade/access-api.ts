// The public calls on access control and the audit log: acting as a principal, access policies,
// and queries and checks of the log.

import { checkPrincipal, parseAccessPolicy, type AccessPolicy, type Principal } from '../access/access-control.js'
import type { AuditEntry, AuditQuery, AuditVerification } from '../access/audit-log.js'
import { GalleonError, describe } from '../errors.js'
import { namedArgument, principalHandle, type CallContext } from './access-guard.js'
import type { Facade } from './assembly.js'

/** GalleonFS's calls on access policies and the audit log (see their documentation there). */
export class AccessApi {
  readonly #f: Facade

  constructor (f: Facade) {
    this.#f = f
  }

  as<T extends object> (instance: T, principal: Principal): T {
    this.#f.gate.assertApplication('as', principal)
    const context: CallContext = { principal: checkPrincipal(principal), nested: false }
    return principalHandle(instance, this.#f.mounts, this.#f.context, context, this.#f.gate)
  }

  async runAs<T> (principal: Principal, task: () => Promise<T>): Promise<T> {
    try {
      this.#f.gate.assertApplication('runAs', principal)
    } catch (err) {
      // Async: the caller hears of the denial once it is in the audit log (as for checked calls).
      await (err as { recorded?: Promise<unknown> }).recorded
      throw err
    }
    const context: CallContext = { principal: checkPrincipal(principal), nested: false }
    if (typeof task !== 'function') throw new GalleonError('INVALID_ARGUMENT', `runAs() needs a function to run, got ${describe(task)}`)
    return await this.#f.context.run(context, task)
  }

  async createAccessPolicy (definition: AccessPolicy): Promise<AccessPolicy> {
    this.#f.state.assertOpen()
    let policy: AccessPolicy
    try {
      policy = parseAccessPolicy(definition)
    } catch (err) {
      throw await this.#f.gate.refusedArguments('createAccessPolicy', 'admin', undefined, `access-policy:${namedArgument(() => (definition as { name?: unknown } | null)?.name).label}`, err)
    }
    return await this.#f.gate.guard('createAccessPolicy', 'admin', undefined, `access-policy:${policy.name}`, async () => {
      await this.#f.access.put(policy)
      return policy
    })
  }

  async listAccessPolicies (): Promise<AccessPolicy[]> {
    this.#f.state.assertOpen()
    await this.#f.gate.check('listAccessPolicies', 'admin', undefined, 'access-policies')
    return this.#f.access.policies()
  }

  async deleteAccessPolicy (name: string): Promise<void> {
    this.#f.state.assertOpen()
    await this.#f.gate.guard('deleteAccessPolicy', 'admin', undefined, `access-policy:${String(name)}`, async () => {
      if (typeof name !== 'string' || this.#f.access.policy(name) === undefined) throw new GalleonError('INVALID_ARGUMENT', `no access policy named ${describe(name)}; listAccessPolicies() shows them`)
      await this.#f.access.delete(name)
    })
  }

  async queryAuditLog (query: AuditQuery = {}): Promise<AuditEntry[]> {
    this.#f.state.assertOpen()
    await this.#f.gate.check('queryAuditLog', 'admin', undefined, 'audit-log')
    return await this.#f.audit.query(query)
  }

  async verifyAuditLog (expectedHead?: { seq: number, hash: string }): Promise<AuditVerification> {
    this.#f.state.assertOpen()
    await this.#f.gate.check('verifyAuditLog', 'admin', undefined, 'audit-log')
    return await this.#f.audit.verify(expectedHead)
  }

  async auditHead (): Promise<{ seq: number, hash: string }> {
    this.#f.state.assertOpen()
    await this.#f.gate.check('auditHead', 'admin', undefined, 'audit-log')
    return this.#f.audit.head()
  }
}
