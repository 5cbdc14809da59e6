import Foundation
import HavenCatalog
import HavenCore
import XenAPI

/// Switches CBT on (marking it as haven's) or off (only where haven's mark says it switched it on).
enum CBTRunner {
    static func enable(_ a: PlannedAction, _ change: CBTChange, _ ctx: ExecutionContext) async throws -> ActionOutcome {
        let c = try ctx.client(a.pool)
        let d = change.disk
        guard let vdi = try await lookup({ try await c.vdi(uuid: d.vdiUUID) }) else {
            throw EngineError(.action, d.vdiUUID, "disk \(d.name) (\(d.vdiUUID)) no longer exists on pool \(a.pool)")
        }
        try await withRetry(on: { ctx.log(a, $0) }) { try await c.enableCBT(vdi) }
        try await c.setOtherConfig(vdi, key: OwnershipMarks.cbt, value: ctx.instance)
        try ctx.catalog.markCBT(CBTMark(pool: a.pool, vdiUUID: d.vdiUUID, policy: a.policy ?? ""))
        return ActionOutcome("CBT enabled on \(d.name)")
    }

    static func disable(_ a: PlannedAction, _ change: CBTChange, _ ctx: ExecutionContext) async throws -> ActionOutcome {
        let c = try ctx.client(a.pool)
        let uuid = change.disk.vdiUUID
        guard let vdi = try await lookup({ try await c.vdi(uuid: uuid) }) else {
            try ctx.catalog.unmarkCBT(pool: a.pool, vdiUUID: uuid)
            return ActionOutcome("disk \(change.disk.name) is gone; nothing to switch off")
        }
        let record = try await c.record(vdi)
        guard record.otherConfig[OwnershipMarks.cbt] == ctx.instance else {
            throw EngineError(.action, uuid, "CBT on \(change.disk.name) was not enabled by this haven; left alone")
        }
        try await withRetry(on: { ctx.log(a, $0) }) { try await c.disableCBT(vdi) }
        try await c.call(.vdiRemoveFromOtherConfig, [vdi.value, .string(OwnershipMarks.cbt)])
        try ctx.catalog.unmarkCBT(pool: a.pool, vdiUUID: uuid)
        return ActionOutcome("CBT disabled on \(change.disk.name)")
    }
}
