import CrashPoints
import Foundation
import HavenCatalog
import HavenCore
import XenAPI

/// A VDI plugged into a leased appliance for one transfer: its VBD and the name the appliance's
/// kernel (and so its mover) gives it.
struct PluggedDisk: Sendable {
    let vbd: VBDRef
    let vbdUUID: String
    let device: String
    let appliance: ApplianceInfo
}

/// Plugs a transfer's VDIs into an appliance and takes them out again. Every VBD it makes carries
/// haven's mark (`haven.role: appliance-transfer-disk`) and is in the catalog's inventory before
/// it is plugged, so a run that dies with a disk plugged in leaves a VBD the next lease of that
/// appliance finds and removes. It never touches a VBD without that mark (a user's disk plugged
/// into an appliance by hand stays).
struct ApplianceDisks: Sendable {
    static let role = "appliance-transfer-disk"
    /// The VDI a transfer VBD was made for, in the VBD's other_config.
    static let vdiKey = "haven.vdi"

    let client: XenAPIClient
    let catalog: Catalog
    let instance: String
    let pool: String
    let log: @Sendable (String) -> Void

    /// Unplugs and destroys what earlier transfers of this haven left plugged into the appliance.
    /// Called with the appliance leased: no transfer of this haven uses it now.
    func clearLeftovers(_ appliance: ApplianceInfo) async throws {
        guard let vm = try await lookup({ try await client.vm(uuid: appliance.uuid) }) else { return }
        let inventory = Set(try catalog.view().inventory.filter { $0.pool == pool && $0.cls == "VBD" }.map(\.uuid))
        for ref in try await client.record(vm).vbds {
            guard let b = try await lookup({ try await client.record(ref) }) else { continue }
            guard b.otherConfig[OwnershipMarks.owner] == instance, b.otherConfig[OwnershipMarks.role] == Self.role else { continue }
            log("appliance \(appliance.name): removing the disk a stopped transfer left plugged in (VBD \(b.uuid), VDI \(b.otherConfig[Self.vdiKey] ?? "?"))")
            try await remove(ref, uuid: b.uuid, attached: b.currentlyAttached)
            if inventory.contains(b.uuid) { try catalog.disown(pool: pool, uuid: b.uuid) }
        }
    }

    /// Takes `vdi` out of every appliance a transfer of this haven plugged it into (a run that
    /// died mid-transfer): before haven destroys the VDI or its data, which xapi refuses while it
    /// is attached. Only VBDs with haven's transfer mark; any other VBD is left alone.
    func detachTransfers(of vdi: VDIRef) async throws {
        guard let v = try await lookup({ try await client.record(vdi) }) else { return }
        for ref in v.vbds {
            guard let b = try await lookup({ try await client.record(ref) }),
                  b.otherConfig[OwnershipMarks.owner] == instance, b.otherConfig[OwnershipMarks.role] == Self.role else { continue }
            log("taking \(v.nameLabel) out of the appliance a stopped transfer left it plugged into (VBD \(b.uuid))")
            try await remove(ref, uuid: b.uuid, attached: b.currentlyAttached)
            try catalog.disown(pool: pool, uuid: b.uuid)
        }
    }

    /// Plugs `vdi` into the appliance at its lowest free userdevice (never 0, its own disk):
    /// read-only for a source, read-write for a target.
    func plug(_ vdi: VDIRef, vdiUUID: String, into appliance: ApplianceInfo, readOnly: Bool, now: Date) async throws -> PluggedDisk {
        guard let vm = try await lookup({ try await client.vm(uuid: appliance.uuid) }) else {
            throw EngineError(.action, appliance.name, "appliance \(appliance.name) (\(appliance.uuid)) is gone from pool \(pool)")
        }
        var used = Set<Int>()
        for ref in try await client.record(vm).vbds {
            if let b = try await lookup({ try await client.record(ref) }), let n = Int(b.userdevice) { used.insert(n) }
        }
        guard let free = (1...15).first(where: { !used.contains($0) }) else {
            throw EngineError(.action, appliance.name, "appliance \(appliance.name) has no free disk slot (userdevices 1-15 are taken)")
        }
        var spec = NewVBD(vm: vm, vdi: vdi, userdevice: String(free))
        spec.mode = readOnly ? "RO" : "RW"
        spec.otherConfig = [OwnershipMarks.owner: instance, OwnershipMarks.role: Self.role, Self.vdiKey: vdiUUID]
        let vbd = try await client.createVBD(spec)
        let uuid = try await client.record(vbd).uuid
        // In the inventory before it is plugged: found again whatever happens next.
        try catalog.own(OwnedObject(pool: pool, cls: "VBD", uuid: uuid, role: Self.role, policy: "appliance:\(appliance.appliancePool)",
                                    vmUUID: appliance.uuid, createdAt: now))
        do {
            try await withRetry(on: log) { try await client.plug(vbd) }
            CrashPoints.step("appliance-disk-plugged")
            let device = try await client.record(vbd).device
            guard !device.isEmpty else { throw EngineError(.action, appliance.name, "VBD \(uuid) is plugged but xapi reports no device name for it") }
            return PluggedDisk(vbd: vbd, vbdUUID: uuid, device: device, appliance: appliance)
        } catch {
            let me = self
            await Task.detached { await me.unplug(PluggedDisk(vbd: vbd, vbdUUID: uuid, device: "", appliance: appliance)) }.value
            throw error
        }
    }

    /// Unplugs and destroys a transfer's VBD (the VDI stays). A failure is logged: the VBD keeps
    /// its mark and the next lease of the appliance removes it.
    func unplug(_ p: PluggedDisk) async {
        do {
            let attached = try await lookup({ try await client.record(p.vbd) })?.currentlyAttached
            if let attached { try await remove(p.vbd, uuid: p.vbdUUID, attached: attached) }
            try catalog.disown(pool: pool, uuid: p.vbdUUID)
        } catch {
            log("could not take VBD \(p.vbdUUID) out of appliance \(p.appliance.name) (\(error)); it carries haven's mark and the next transfer through it removes it")
        }
    }

    private func remove(_ vbd: VBDRef, uuid: String, attached: Bool) async throws {
        if attached {
            do {
                try await withRetry(on: log) { try await client.unplug(vbd) }
            } catch let e as XenAPIError where e.code == XenAPIError.Code.deviceAlreadyDetached {}
        }
        do {
            try await withRetry(on: log) { try await client.destroy(vbd) }
        } catch let e as XenAPIError where e.code == XenAPIError.Code.handleInvalid {}
    }
}
