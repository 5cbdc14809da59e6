import CrashPoints
import Foundation
import HavenCatalog
import HavenCore
import HavenMover
import XenAPI

/// An appliance haven can lease: where it answers and how it is checked.
public struct ApplianceInfo: Sendable, Hashable {
    public var pool: String
    public var appliancePool: String
    public var uuid: String
    public var name: String
    /// The address its guest reports (for a static one, the address it was given).
    public var address: String
    public var isStatic: Bool
    public var pin: String
    public var running: Bool
}

/// Makes, starts and removes appliance VMs on one pool. Every object it makes carries haven's
/// marks and is in the catalog's inventory from the moment it exists; it only ever removes
/// objects that carry this haven's mark and are in that inventory.
struct ApplianceProvisioner: Sendable {
    let client: XenAPIClient
    let pool: String
    let catalog: Catalog
    let state: StateDirectory
    let instance: String
    let log: @Sendable (String) -> Void
    /// How long a started appliance may take to report its address.
    var bootTimeout: Double = ApplianceProvisioner.defaultBootTimeout

    /// `HAVEN_APPLIANCE_BOOT_TIMEOUT` (seconds), else 300: a real appliance boots in well under a minute.
    static var defaultBootTimeout: Double {
        ProcessInfo.processInfo.environment["HAVEN_APPLIANCE_BOOT_TIMEOUT"].flatMap(Double.init) ?? 300
    }

    /// Clones the template onto the SR, marks it and its disks, one VIF on the network, memory,
    /// the address and the mover's credentials in `xenstore_data`; starts it and reads back the
    /// address it really has.
    func provision(_ job: ApplianceProvision, now: Date) async throws -> ApplianceInfo {
        guard let template = try await lookup({ try await client.vm(uuid: job.templateUUID) }) else {
            throw EngineError(.action, job.template, "the template \(job.template) (\(job.templateUUID)) is gone from pool \(pool)")
        }
        if let ip = job.address.ip { try await checkFree(ip, for: job.name) }
        let sr = try await client.sr(uuid: job.srUUID)
        let created = ISO8601DateFormatter().string(from: now)
        // Recorded before VM.copy, and the copy carries the intent's exact name until it is
        // recorded: a run killed in between leaves a copy the next plan finds by that name.
        let intent = "\(applianceIntentPrefix)\(job.name) \(created) pid \(getpid())"
        try catalog.recordIntent(SnapshotIntent(pool: pool, vmUUID: job.templateUUID, policy: applianceOwnerKey(job.appliancePool), name: intent,
                                                requestedAt: now))
        let vm: VMRef
        do {
            vm = try await withRetry(on: log) { try await client.copy(template, name: intent, sr: sr) }
        } catch let e as XenAPIError {
            // xapi answered: no copy was made.
            try? catalog.clearIntent(pool: pool, name: intent)
            throw e
        }
        CrashPoints.step("appliance-cloned")
        let marks = [
            (OwnershipMarks.owner, instance), (OwnershipMarks.role, OwnershipMarks.applianceRole),
            (OwnershipMarks.policy, applianceOwnerKey(job.appliancePool)), (OwnershipMarks.appliancePool, job.appliancePool), ("haven.created", created),
        ]
        for (k, v) in marks { try await client.setOtherConfig(vm, key: k, value: v) }
        let record = try await client.record(vm)
        // In the inventory at once: whatever fails from here on leaves nothing haven cannot find and remove.
        try catalog.own(OwnedObject(pool: pool, cls: "VM", uuid: record.uuid, role: OwnershipMarks.applianceRole, policy: applianceOwnerKey(job.appliancePool),
                                    vmUUID: record.uuid, createdAt: now))
        CrashPoints.step("appliance-owned")
        do {
            try await configure(vm, record, job, now: now)
            // Recorded with its disks: from now on it is found as an appliance, by its marks and the inventory.
            try await client.setNameLabel(vm, job.name)
            try catalog.clearIntent(pool: pool, name: intent)
            return try await boot(vm, uuid: record.uuid, job: job)
        } catch {
            log("appliance \(job.name) did not come up (\(error)); it is removed")
            let me = self
            let uuid = record.uuid
            await Task.detached {
                if (try? await me.destroy(uuid: uuid, name: job.name)) != nil { try? me.catalog.clearIntent(pool: me.pool, name: intent) }
            }.value
            throw error
        }
    }

    /// Removes a copy a run left while provisioning, before the appliance was recorded: only the
    /// VM that carries the recorded intent's exact name and no other haven's mark, with its disks
    /// (those carrying no mark or this haven's); then the intent goes.
    func removeLeftCopy(_ t: ApplianceTarget, intent name: String) async throws -> String {
        guard let intent = try catalog.view().intents.first(where: { $0.pool == pool && $0.name == name && $0.isApplianceIntent }) else {
            throw EngineError(.action, t.uuid, "no recorded intent '\(name)' proves VM \(t.uuid) is haven's; left alone")
        }
        guard let vm = try await lookup({ try await client.vm(uuid: t.uuid) }) else {
            try forget(uuid: t.uuid)
            return "the copy \(t.uuid) left by a stopped provisioning was already gone"
        }
        let record = try await client.record(vm)
        guard record.nameLabel == intent.name, (record.otherConfig[OwnershipMarks.owner] ?? instance) == instance,
              (record.otherConfig[OwnershipMarks.role] ?? OwnershipMarks.applianceRole) == OwnershipMarks.applianceRole else {
            throw EngineError(.action, t.uuid, "VM \(record.nameLabel) (\(t.uuid)) does not match haven's recorded intent; left alone")
        }
        var disks: [(VDIRef, String)] = []
        for vbd in record.vbds {
            let b = try await client.record(vbd)
            guard b.type == "Disk", !b.vdi.isNull, let v = try await lookup({ try await client.record(b.vdi) }) else { continue }
            guard (v.otherConfig[OwnershipMarks.owner] ?? instance) == instance,
                  (v.otherConfig[OwnershipMarks.role] ?? OwnershipMarks.applianceDiskRole) == OwnershipMarks.applianceDiskRole else {
                throw EngineError(.action, t.uuid, "VM \(record.nameLabel) has disk \(v.nameLabel) (\(v.uuid)) that is not its own; left alone")
            }
            disks.append((b.vdi, v.uuid))
        }
        if record.powerState != .halted { try await withRetry(on: log) { try await client.hardShutdown(vm) } }
        try await withRetry(on: log) { try await client.destroy(vm) }
        for (ref, _) in disks { try await withRetry(attempts: 8, on: log) { try await client.destroy(ref) } }
        try forget(uuid: t.uuid)
        try catalog.clearIntent(pool: pool, name: intent.name)
        return "removed \(record.nameLabel) and \(disks.count) disk\(disks.count == 1 ? "" : "s"): a run stopped while provisioning it"
    }

    private func configure(_ vm: VMRef, _ record: VMRecord, _ job: ApplianceProvision, now: Date) async throws {
        if record.isATemplate { try await client.setIsATemplate(vm, false) }
        for vbd in record.vbds {
            let b = try await client.record(vbd)
            guard b.type == "Disk", !b.vdi.isNull else { continue }
            try await client.setOtherConfig(b.vdi, key: OwnershipMarks.owner, value: instance)
            try await client.setOtherConfig(b.vdi, key: OwnershipMarks.role, value: OwnershipMarks.applianceDiskRole)
            let uuid = try await client.record(b.vdi).uuid
            try catalog.own(OwnedObject(pool: pool, cls: "VDI", uuid: uuid, role: OwnershipMarks.applianceDiskRole,
                                        policy: applianceOwnerKey(job.appliancePool), vmUUID: record.uuid, createdAt: now))
        }
        // One VIF, on the AppliancePool's network, whatever the template carried.
        for vif in record.vifs { try await client.destroy(vif) }
        let networks = try await client.records(NetworkRecord.self)
        guard let net = networks.first(where: { $0.value.nameLabel == job.network })?.key else {
            throw EngineError(.action, job.network, "pool \(pool) has no network named \(job.network)")
        }
        _ = try await client.createVIF(["VM": vm.value, "network": net.value, "device": "0", "MAC": "", "MTU": 1500,
                                        "other_config": [:], "qos_algorithm_type": "", "qos_algorithm_params": [:]])
        if record.memoryStaticMax != job.memory || record.memoryDynamicMax != job.memory || record.memoryDynamicMin != job.memory {
            try await client.setMemoryLimits(vm, staticMin: min(record.memoryStaticMin, job.memory), staticMax: job.memory,
                                             dynamicMin: job.memory, dynamicMax: job.memory)
        }
        let credentials = try MoverSeam.newCredentials(name: job.name)
        if !credentials.tokenKey.isEmpty { try state.writeApplianceKey(credentials.tokenKey, pool: pool, uuid: record.uuid) }
        let network = MoverSeam.networkData(ip: job.address.ip, netmask: job.address.netmask, gateway: job.address.gateway, dns: job.address.dns)
        try await client.setXenstoreData(vm, network.merging(credentials.xenstoreData) { a, _ in a })
        try catalog.setAppliance(ApplianceRecord(pool: pool, uuid: record.uuid, name: job.name, appliancePool: job.appliancePool,
                                                 staticAddress: job.address.ip ?? "", pin: credentials.pin, createdAt: now))
    }

    private func boot(_ vm: VMRef, uuid: String, job: ApplianceProvision) async throws -> ApplianceInfo {
        try await withRetry(on: log) { try await client.start(vm) }
        let address = try await waitForAddress(vm, name: job.name, expected: job.address.ip)
        let pin = try catalog.view().appliances.first { $0.pool == pool && $0.uuid == uuid }?.pin ?? ""
        log("appliance \(job.name) is up at \(address) (\(job.address.isStatic ? "static" : "DHCP"))")
        return ApplianceInfo(pool: pool, appliancePool: job.appliancePool, uuid: uuid, name: job.name, address: address, isStatic: job.address.isStatic,
                             pin: pin, running: true)
    }

    /// No VM of the pool reports the address and no appliance was given it: the plan's choice
    /// still holds. Two calls, whatever the number of VMs.
    func checkFree(_ ip: String, for name: String) async throws {
        let vms = try await client.records(VMRecord.self)
        let metrics = try await client.records(VMGuestMetricsRecord.self)
        for (_, vm) in vms where vm.isRealVM {
            if vm.xenstoreData[MoverXenstore.ip] == ip, vm.otherConfig[OwnershipMarks.role] == OwnershipMarks.applianceRole {
                throw EngineError(.action, name, "address \(ip) is already given to appliance \(vm.nameLabel); the next plan picks another")
            }
            if metrics[vm.guestMetrics]?.addresses.contains(ip) == true {
                throw EngineError(.action, name, "address \(ip) is now used by VM \(vm.nameLabel) (its guest metrics report it); the next plan picks another")
            }
        }
    }

    /// Waits until the guest reports an address (the static one, when one was given).
    func waitForAddress(_ vm: VMRef, name: String, expected: String?) async throws -> String {
        let deadline = Date().addingTimeInterval(bootTimeout)
        var delay = 0.05
        var seen: [String] = []
        while true {
            seen = try await client.guestAddresses(vm)
            if let expected {
                if seen.contains(expected) { return expected }
            } else if let first = seen.first {
                return first
            }
            if Date() >= deadline { break }
            try await Task.sleep(for: .seconds(delay))
            delay = min(delay * 2, 2)
        }
        let what = seen.isEmpty ? "reports no address" : "reports \(seen.joined(separator: ", ")) instead of \(expected ?? "")"
        throw EngineError(.action, name, "appliance \(name) \(what) after \(Int(bootTimeout))s: check that its guest reads vm-data/haven/ip from xenstore"
                          + (expected == nil ? " and that network serves DHCP" : ""))
    }

    /// Starts a halted appliance of haven's and waits for its address.
    func start(_ t: ApplianceTarget) async throws -> ApplianceInfo {
        let (vm, record) = try await ownedAppliance(t)
        let given = record.xenstoreData[MoverXenstore.ip]
        if record.powerState != .running { try await withRetry(on: log) { try await client.start(vm) } }
        let address = try await waitForAddress(vm, name: t.name, expected: given)
        let pin = try catalog.view().appliances.first { $0.pool == pool && $0.uuid == t.uuid }?.pin ?? ""
        return ApplianceInfo(pool: pool, appliancePool: t.appliancePool, uuid: t.uuid, name: t.name, address: address, isStatic: given != nil,
                             pin: pin, running: true)
    }

    /// The VM of an appliance, after checking it is this haven's: in the inventory and marked.
    func ownedAppliance(_ t: ApplianceTarget) async throws -> (VMRef, VMRecord) {
        guard try catalog.view().inventory.contains(where: { $0.pool == pool && $0.uuid == t.uuid && $0.cls == "VM" }) else {
            throw EngineError(.action, t.name, "\(t.name) (\(t.uuid)) is not in haven's inventory; left alone")
        }
        guard let vm = try await lookup({ try await client.vm(uuid: t.uuid) }) else {
            throw EngineError(.action, t.name, "appliance \(t.name) (\(t.uuid)) is gone from pool \(pool)")
        }
        let record = try await client.record(vm)
        guard record.otherConfig[OwnershipMarks.owner] == instance, record.otherConfig[OwnershipMarks.role] == OwnershipMarks.applianceRole else {
            throw EngineError(.action, t.name, "\(record.nameLabel) does not carry haven's appliance mark; left alone")
        }
        return (vm, record)
    }

    /// Shuts the appliance down and destroys it with its own disks (those marked as haven's
    /// appliance disks and in the inventory). Refused while it is in use.
    func remove(_ t: ApplianceTarget) async throws -> String {
        let view = try catalog.view()
        guard view.inventory.contains(where: { $0.pool == pool && $0.uuid == t.uuid && $0.cls == "VM" })
            || view.appliances.contains(where: { $0.pool == pool && $0.uuid == t.uuid }) else {
            throw EngineError(.action, t.name, "\(t.name) (\(t.uuid)) is not in haven's inventory; left alone")
        }
        if let lease = try catalog.view().leases.first(where: { $0.pool == pool && $0.uuid == t.uuid }) {
            throw EngineError(.action, t.name, "appliance \(t.name) is in use (\(lease.holder) since \(ISO8601DateFormatter().string(from: lease.since))); it is never removed while in use")
        }
        return try await destroy(uuid: t.uuid, name: t.name)
    }

    @discardableResult
    func destroy(uuid: String, name: String) async throws -> String {
        guard let vm = try await lookup({ try await client.vm(uuid: uuid) }) else {
            // Its own disks may have outlived it (VM.destroy keeps VDIs): they go too.
            var removed = 0
            for o in try catalog.view().inventory where o.pool == pool && o.cls == "VDI" && o.vmUUID == uuid && o.role == OwnershipMarks.applianceDiskRole {
                guard let ref = try await lookup({ try await client.vdi(uuid: o.uuid) }) else { continue }
                guard try await client.record(ref).otherConfig[OwnershipMarks.owner] == instance else { continue }
                try await withRetry(attempts: 8, on: log) { try await client.destroy(ref) }
                try catalog.disown(pool: pool, uuid: o.uuid)
                removed += 1
            }
            try forget(uuid: uuid)
            return "appliance \(name) was already gone" + (removed > 0 ? "; removed \(removed) disk\(removed == 1 ? "" : "s") it left" : "")
        }
        let record = try await client.record(vm)
        let inventory = Set(try catalog.view().inventory.filter { $0.pool == pool }.map(\.uuid))
        guard inventory.contains(uuid), record.otherConfig[OwnershipMarks.owner] == instance,
              record.otherConfig[OwnershipMarks.role] == OwnershipMarks.applianceRole else {
            throw EngineError(.action, name, "\(record.nameLabel) is not an appliance of this haven (its mark and haven's inventory must both say so); left alone")
        }
        var own: [(VDIRef, String)] = []
        for vbd in record.vbds {
            let b = try await client.record(vbd)
            guard b.type == "Disk", !b.vdi.isNull, let v = try await lookup({ try await client.record(b.vdi) }) else { continue }
            let mine = v.otherConfig[OwnershipMarks.owner] == instance && v.otherConfig[OwnershipMarks.role] == OwnershipMarks.applianceDiskRole
                && inventory.contains(v.uuid)
            if mine {
                own.append((b.vdi, v.uuid))
            } else if b.currentlyAttached {
                // A transfer's disk is plugged in: the appliance is in use.
                throw EngineError(.action, name, "appliance \(name) has disk \(v.nameLabel) (\(v.uuid)) plugged in: it is in use and is not removed")
            }
        }
        if record.powerState != .halted {
            do {
                try await client.cleanShutdown(vm)
            } catch let e as XenAPIError where e.code != XenAPIError.Code.handleInvalid {
                log("clean shutdown of \(name) failed (\(e.code)); forcing it")
                try await withRetry(on: log) { try await client.hardShutdown(vm) }
            }
        }
        try await withRetry(on: log) { try await client.destroy(vm) }
        try catalog.disown(pool: pool, uuid: uuid)
        for (ref, vdiUUID) in own {
            try await withRetry(attempts: 8, on: log) { try await client.destroy(ref) }
            try catalog.disown(pool: pool, uuid: vdiUUID)
        }
        try forget(uuid: uuid)
        return "removed appliance \(name) and \(own.count) disk\(own.count == 1 ? "" : "s")"
    }

    /// Drops what the catalog and the state directory know of an appliance that is gone.
    func forget(uuid: String) throws {
        let owned = try catalog.view().inventory.filter { $0.pool == pool && ($0.uuid == uuid || ($0.vmUUID == uuid && $0.role == OwnershipMarks.applianceDiskRole)) }
        for o in owned { try catalog.disown(pool: pool, uuid: o.uuid) }
        try catalog.removeAppliance(pool: pool, uuid: uuid)
        state.removeApplianceKey(pool: pool, uuid: uuid)
    }
}
