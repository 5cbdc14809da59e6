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

    /// A disk a transfer left plugged into an appliance must come out before it can go.
    static func transfers(_ a: PlannedAction, _ c: XenAPIClient, _ ctx: ExecutionContext) -> ApplianceDisks {
        ApplianceDisks(client: c, catalog: ctx.catalog, instance: ctx.instance, pool: a.pool, log: { ctx.log(a, $0) })
    }

    static func snapshot(_ a: PlannedAction, _ r: OwnedRemoval, _ ctx: ExecutionContext) async throws -> ActionOutcome {
        let c = try ctx.client(a.pool)
        if let name = r.adoptIntent { try await adopt(a, r, name: name, ctx) }
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
            // Gone since the VM was read: its disk was destroyed (by an anchor's retirement
            // beside this action), which took the VBD with it.
            guard let b = try await lookup({ try await c.record(vbd) }) else { continue }
            if !b.vdi.isNull, b.type == "Disk" { vdis.append(b.vdi) }
        }
        // Its disks first, then the snapshot VM: killed in between, the VM (marked, in the
        // inventory) is still there to be found again; the other way round a disk whose marks
        // were half written stayed attached to nothing, found by no plan (kill sweep).
        let anchors = Set(try ctx.catalog.view().anchors.map(\.snapshotVDI))
        for vdi in vdis {
            guard let info = try await lookup({ try await c.record(vdi) }) else { continue }
            guard info.otherConfig[OwnershipMarks.owner] == ctx.instance else { continue }
            // A snapshot disk that serves as a CBT anchor stays (as CBT metadata) until replaced.
            if anchors.contains(info.uuid) { continue }
            try await unlessGone({ try await c.vdi(uuid: info.uuid) }) {
                try await transfers(a, c, ctx).detachTransfers(of: vdi)
                try await withRetry(on: { ctx.log(a, $0) }) { try await c.destroy(vdi) }
            }
            try ctx.catalog.disown(pool: a.pool, uuid: info.uuid)
        }
        try await unlessGone({ try await c.vm(uuid: record.uuid) }) { try await withRetry(on: { ctx.log(a, $0) }) { try await c.destroy(vm) } }
        try ctx.catalog.disown(pool: a.pool, uuid: r.uuid)
        return ActionOutcome("deleted snapshot \(record.nameLabel)")
    }

    /// Runs a removal; HANDLE_INVALID / UUID_INVALID from it is "already gone" only when the object
    /// is really gone (looked up again by uuid): an action beside this one removed it — an xva
    /// sync removing the previous replica with the restore point a killed run left (kill sweep: the
    /// apply failed on `HANDLE_INVALID [VDI, …]`). Still there, the error stands.
    static func unlessGone<T: Sendable>(_ find: () async throws -> T, _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let e as XenAPIError where e.code == XenAPIError.Code.uuidInvalid || e.code == XenAPIError.Code.handleInvalid {
            guard try await lookup(find) == nil else { throw e }
        }
    }

    /// Proves a snapshot left by a run that died inside VM.snapshot is haven's — the recorded
    /// intent names its VM and its exact name, and no one else marked it — then marks it and its
    /// disks as haven's, so the ordinary removal takes it.
    static func adopt(_ a: PlannedAction, _ r: OwnedRemoval, name: String, _ ctx: ExecutionContext) async throws {
        let c = try ctx.client(a.pool)
        guard let intent = try ctx.catalog.view().intents.first(where: { $0.pool == a.pool && $0.name == name }) else {
            throw EngineError(.action, r.uuid, "no recorded intent '\(name)' proves snapshot \(r.uuid) is haven's; left alone")
        }
        guard let vm = try await lookup({ try await c.vm(uuid: r.uuid) }) else {
            try ctx.catalog.clearIntent(pool: a.pool, name: name)
            return
        }
        let rec = try await c.record(vm)
        let source = rec.snapshotOf.isNull ? "" : try await c.record(rec.snapshotOf).uuid
        guard rec.isASnapshot, rec.nameLabel == name, source == intent.vmUUID, (rec.otherConfig[OwnershipMarks.owner] ?? ctx.instance) == ctx.instance else {
            throw EngineError(.action, r.uuid, "snapshot \(rec.nameLabel) does not match haven's recorded intent; left alone")
        }
        for (k, v) in [(OwnershipMarks.owner, ctx.instance), (OwnershipMarks.role, "backup-snapshot"), (OwnershipMarks.policy, intent.policy),
                       (OwnershipMarks.source, intent.vmUUID)] where rec.otherConfig[k] != v {
            try await c.setOtherConfig(vm, key: k, value: v)
        }
        try ctx.catalog.own(OwnedObject(pool: a.pool, cls: "VM", uuid: rec.uuid, role: "backup-snapshot", policy: intent.policy, vmUUID: intent.vmUUID,
                                        createdAt: intent.requestedAt))
        for vbd in rec.vbds {
            let b = try await c.record(vbd)
            guard b.type == "Disk", !b.vdi.isNull else { continue }
            let v = try await c.record(b.vdi)
            guard (v.otherConfig[OwnershipMarks.owner] ?? ctx.instance) == ctx.instance else { continue }
            if v.otherConfig[OwnershipMarks.owner] == nil { try await c.setOtherConfig(b.vdi, key: OwnershipMarks.owner, value: ctx.instance) }
            try ctx.catalog.own(OwnedObject(pool: a.pool, cls: "VDI", uuid: v.uuid, role: "snapshot-disk", policy: intent.policy, vmUUID: intent.vmUUID,
                                            createdAt: intent.requestedAt))
        }
        try ctx.catalog.clearIntent(pool: a.pool, name: name)
        ctx.log(a, "adopted \(rec.nameLabel): a run stopped during VM.snapshot left it")
    }

    /// Finishes a committed backup's clean-up: the anchor keeps only CBT metadata.
    static func purge(_ a: PlannedAction, _ r: OwnedRemoval, _ ctx: ExecutionContext) async throws -> ActionOutcome {
        let c = try ctx.client(a.pool)
        try checkInventory(a, r.uuid, ctx)
        guard let vdi = try await lookup({ try await c.vdi(uuid: r.uuid) }) else {
            try ctx.catalog.disown(pool: a.pool, uuid: r.uuid)
            try ctx.catalog.removeAnchor(pool: a.pool, snapshotVDI: r.uuid)
            return ActionOutcome("snapshot disk \(r.uuid) was already gone")
        }
        let record = try await c.record(vdi)
        guard record.otherConfig[OwnershipMarks.owner] == ctx.instance else {
            throw EngineError(.action, r.uuid, "VDI \(record.nameLabel) does not carry haven's mark; left alone")
        }
        try await transfers(a, c, ctx).detachTransfers(of: vdi)
        try await withRetry(attempts: 8, on: { ctx.log(a, $0) }) { try await c.dataDestroy(vdi) }
        try await c.setOtherConfig(vdi, key: OwnershipMarks.role, value: "cbt-anchor")
        if var anchor = try ctx.catalog.view().anchors.first(where: { $0.pool == a.pool && $0.snapshotVDI == r.uuid }) {
            anchor.dataDestroyed = true
            anchor.snapshotVM = ""
            try ctx.catalog.setAnchor(anchor)
        }
        return ActionOutcome("destroyed the data of \(record.nameLabel); its CBT metadata stays as the anchor")
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
        try await transfers(a, c, ctx).detachTransfers(of: vdi)
        try await withRetry(on: { ctx.log(a, $0) }) { try await c.destroy(vdi) }
        try ctx.catalog.disown(pool: a.pool, uuid: r.uuid)
        try ctx.catalog.removeAnchor(pool: a.pool, snapshotVDI: r.uuid)
        return ActionOutcome("retired CBT anchor \(r.uuid)")
    }
}
