import Foundation
import HavenCatalog
import HavenCore
import XenAPI

/// Destroys a replica haven made: its restore points (haven's snapshots of it) with their disks,
/// then the VM with the disks that carry haven's mark. Everything it touches carries `instance`'s
/// mark; the caller has checked the VM's own mark and the catalog. Returns what it did.
func destroyReplica(_ client: XenAPIClient, pool: String, ref: VMRef, instance: String, catalog: Catalog,
                    log: @escaping @Sendable (String) -> Void) async throws -> [String] {
    var done: [String] = []
    let rec = try await client.record(ref)
    if rec.powerState != .halted { try await client.hardShutdown(ref) }
    func disks(_ vm: VMRecord) async throws -> [VDIRef] {
        var out: [VDIRef] = []
        for vbd in vm.vbds {
            let b = try await client.record(vbd)
            if b.type == "Disk", !b.vdi.isNull { out.append(b.vdi) }
        }
        return out
    }
    // Disks before their VM, everywhere: killed in between, the VM (marked, in the inventory) is
    // still there for the next run to find and remove; the other way round its disks stayed,
    // attached to nothing, carrying marks no plan looked for (found by the kill sweep).
    for (pref, p) in try await client.records(VMRecord.self) where p.isASnapshot && p.snapshotOf == ref && p.otherConfig[OwnershipMarks.owner] == instance {
        for d in try await disks(p) {
            let uuid = try await client.record(d).uuid
            try await withRetry(on: log) { try await client.destroy(d) }
            try catalog.disown(pool: pool, uuid: uuid)
        }
        try await withRetry(on: log) { try await client.destroy(pref) }
        try catalog.disown(pool: pool, uuid: p.uuid)
        done.append("deleted restore point \(p.nameLabel)")
    }
    for d in try await disks(rec) {
        let v = try await client.record(d)
        guard v.otherConfig[OwnershipMarks.owner] == instance else { continue }
        try await withRetry(on: log) { try await client.destroy(d) }
        try catalog.disown(pool: pool, uuid: v.uuid)
    }
    try await withRetry(on: log) { try await client.destroy(ref) }
    try catalog.disown(pool: pool, uuid: rec.uuid)
    done.append("deleted replica \(rec.nameLabel) (\(rec.uuid)) on \(pool)")
    return done
}

/// A replica (or loose replica disks) that is not the replica of record: checked against haven's
/// marks and the catalog (inventory, or the intent recorded before `VM.create`), then destroyed.
struct RemoveReplicaRun {
    let ctx: ExecutionContext
    let action: PlannedAction
    let job: ReplicaRemoval
    let client: XenAPIClient

    func log(_ s: String) { ctx.log(action, s) }

    func run() async throws -> ActionOutcome {
        let view = try ctx.catalog.view()
        let owner = action.policy ?? ""
        func proven(_ uuid: String, _ marks: [String: String]) -> Bool {
            guard marks[OwnershipMarks.owner] == ctx.instance, marks[OwnershipMarks.policy] == owner else { return false }
            // The plan's intent, or (it may have been cleared by the removal of a sibling leftover
            // of another killed run of the same sync) any open replica intent of this VM and policy.
            return view.inventory.contains { $0.pool == job.pool && $0.uuid == uuid }
                || (job.intent.map { i in view.intents.contains { $0.pool == job.pool && $0.name == i } } ?? false)
                || (job.intent != nil && view.intents.contains { $0.pool == job.pool && $0.policy == owner && $0.vmUUID == (action.vm?.uuid ?? "")
                        && $0.name.hasPrefix(replicaIntentPrefix) })
        }
        var done: [String] = []
        if let uuid = job.vmUUID {
            if let ref = try await lookup({ try await client.vm(uuid: uuid) }) {
                let rec = try await client.record(ref)
                // Not yet made a replica: an xva import (a template with its snapshot's marks, or
                // a role half rewritten), proven by the intent recorded before `/import`.
                let role = rec.otherConfig[OwnershipMarks.role]
                let unfinishedImport = rec.isATemplate && !rec.isASnapshot && job.intent != nil && (role == nil || role == "replication-snapshot")
                guard proven(uuid, rec.otherConfig), role == "replica" || unfinishedImport else {
                    throw EngineError(.action, uuid, "VM \(rec.nameLabel) is not provably haven's replica (marks and catalog); left alone")
                }
                if let record = view.replicas.first(where: { $0.replicaUUID == uuid }), !record.diskMap.isEmpty {
                    throw EngineError(.action, uuid, "VM \(rec.nameLabel) became the replica of record since the plan; left alone")
                }
                done += try await destroyReplica(client, pool: job.pool, ref: ref, instance: ctx.instance, catalog: ctx.catalog, log: log)
            }
        }
        for uuid in job.vdis {
            guard let ref = try await lookup({ try await client.vdi(uuid: uuid) }) else { continue }
            let rec = try await client.record(ref)
            guard proven(uuid, rec.otherConfig), rec.vbds.isEmpty else {
                throw EngineError(.action, uuid, "VDI \(rec.nameLabel) is not a loose replica disk of haven's; left alone")
            }
            try await withRetry(on: log) { try await client.destroy(ref) }
            try ctx.catalog.disown(pool: job.pool, uuid: uuid)
            done.append("deleted replica disk \(rec.nameLabel) (\(uuid))")
        }
        if let intent = job.intent { try ctx.catalog.clearIntent(pool: job.pool, name: intent) }
        for d in done { log(d) }
        return ActionOutcome(done.isEmpty ? "nothing left to remove" : done.joined(separator: "; "))
    }
}
