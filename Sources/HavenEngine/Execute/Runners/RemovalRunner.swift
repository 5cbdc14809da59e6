import Foundation
import HavenCatalog
import HavenCore
import XenAPI

/// Destroys what haven made: a snapshot VM with its disks, or a CBT anchor VDI — only after
/// checking it is haven's (in the inventory and carrying this instance's mark on the pool).
/// Only UUID_INVALID / HANDLE_INVALID mean "already gone"; any other error fails the action and
/// the object stays in the inventory, so a later run finds it again.
enum RemovalRunner {
    static func checkInventory(_ a: PlannedAction, _ uuid: String, _ ctx: ExecutionContext) throws {
        let inventory = try ctx.catalog.view().inventory
        guard inventory.contains(where: { $0.pool == a.pool && $0.uuid == uuid }) else {
            throw EngineError(.action, uuid, "\(uuid) is not in haven's inventory; left alone")
        }
    }

    static func snapshot(_ a: PlannedAction, _ r: OwnedRemoval, _ ctx: ExecutionContext) async throws -> ActionOutcome {
        let c = try ctx.client(a.pool)
        try checkInventory(a, r.uuid, ctx)
        guard let vm = try await lookup({ try await c.vm(uuid: r.uuid) }) else {
            try ctx.catalog.disown(pool: a.pool, uuid: r.uuid)
            return ActionOutcome("snapshot \(r.uuid) was already gone")
        }
        let record = try await c.record(vm)
        guard record.otherConfig[OwnershipMarks.owner] == ctx.instance, record.isASnapshot else {
            throw EngineError(.action, r.uuid, "\(record.nameLabel) does not carry haven's mark; left alone")
        }
        var vdis: [VDIRef] = []
        for vbd in record.vbds {
            let b = try await c.record(vbd)
            if !b.vdi.isNull, b.type == "Disk" { vdis.append(b.vdi) }
        }
        try await withRetry(on: { ctx.log(a, $0) }) { try await c.destroy(vm) }
        try ctx.catalog.disown(pool: a.pool, uuid: r.uuid)
        let anchors = Set(try ctx.catalog.view().anchors.map(\.snapshotVDI))
        for vdi in vdis {
            guard let info = try await lookup({ try await c.record(vdi) }) else { continue }
            guard info.otherConfig[OwnershipMarks.owner] == ctx.instance else { continue }
            // A snapshot disk that serves as a CBT anchor stays (as CBT metadata) until replaced.
            if anchors.contains(info.uuid) { continue }
            try await withRetry(on: { ctx.log(a, $0) }) { try await c.destroy(vdi) }
            try ctx.catalog.disown(pool: a.pool, uuid: info.uuid)
        }
        return ActionOutcome("deleted snapshot \(record.nameLabel)")
    }

    static func anchor(_ a: PlannedAction, _ r: OwnedRemoval, _ ctx: ExecutionContext) async throws -> ActionOutcome {
        let c = try ctx.client(a.pool)
        try checkInventory(a, r.uuid, ctx)
        guard let vdi = try await lookup({ try await c.vdi(uuid: r.uuid) }) else {
            try ctx.catalog.disown(pool: a.pool, uuid: r.uuid)
            try ctx.catalog.removeAnchor(pool: a.pool, snapshotVDI: r.uuid)
            return ActionOutcome("anchor \(r.uuid) was already gone")
        }
        let record = try await c.record(vdi)
        guard record.otherConfig[OwnershipMarks.owner] == ctx.instance else {
            throw EngineError(.action, r.uuid, "VDI \(record.nameLabel) does not carry haven's mark; left alone")
        }
        try await withRetry(on: { ctx.log(a, $0) }) { try await c.destroy(vdi) }
        try ctx.catalog.disown(pool: a.pool, uuid: r.uuid)
        try ctx.catalog.removeAnchor(pool: a.pool, snapshotVDI: r.uuid)
        return ActionOutcome("retired CBT anchor \(r.uuid)")
    }
}
