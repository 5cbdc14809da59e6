import Foundation
import HavenCore

/// Provisions, starts and removes appliances as the plan says; what comes up is leasable by the
/// transfers of the same run at once.
enum ApplianceRunner {
    static func provisioner(_ a: PlannedAction, _ ctx: ExecutionContext) throws -> ApplianceProvisioner {
        ApplianceProvisioner(client: try ctx.client(a.pool), pool: a.pool, catalog: ctx.catalog, state: ctx.state, instance: ctx.instance,
                             log: { ctx.log(a, $0) })
    }

    static func provision(_ a: PlannedAction, _ job: ApplianceProvision, _ ctx: ExecutionContext) async throws -> ActionOutcome {
        let info = try await ctx.appliances.provisionPlanned(job, pool: a.pool, now: ctx.now(), log: { ctx.log(a, $0) })
        return ActionOutcome("provisioned appliance \(info.name) at \(info.address) (\(info.isStatic ? "static" : "DHCP"))")
    }

    static func start(_ a: PlannedAction, _ t: ApplianceTarget, _ ctx: ExecutionContext) async throws -> ActionOutcome {
        let info = try await provisioner(a, ctx).start(t)
        await ctx.appliances.register(info)
        return ActionOutcome("started appliance \(info.name) at \(info.address)")
    }

    static func remove(_ a: PlannedAction, _ t: ApplianceTarget, _ ctx: ExecutionContext) async throws -> ActionOutcome {
        let p = try provisioner(a, ctx)
        let said: String
        if let intent = t.intent { said = try await p.removeLeftCopy(t, intent: intent) } else { said = try await p.remove(t) }
        await ctx.appliances.forget(t.uuid)
        return ActionOutcome(said)
    }
}
