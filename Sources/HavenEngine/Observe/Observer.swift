import Foundation
import HavenCore
import HavenMover
import XenAPI

/// Reads a pool into an `ObservedPool` with one `get_all_records` per class: the number of calls
/// does not grow with the number of VMs.
public enum Observer {
    /// The classes read, in order: 10 calls per pool (13 with guest metrics, PIFs and hosts).
    public static let callsPerPool = 10

    /// `guestMetrics`: read VM_guest_metrics too (the addresses guests report), for pools with an
    /// AppliancePool: one more call, still independent of the number of VMs.
    public static func observe(_ client: XenAPIClient, name: String, guestMetrics: Bool = false) async throws -> ObservedPool {
        // The session transfers use is reused: observing never logs out a session that is in use.
        let caps = try await client.currentCapabilities()
        let vmRecords = try await client.records(VMRecord.self)
        let vbds = try await client.records(VBDRecord.self)
        let vdis = try await client.records(VDIRecord.self)
        let srs = try await client.records(SRRecord.self)
        let sms = try await client.records(SMRecord.self)
        let networks = try await client.records(NetworkRecord.self)
        let vifs = try await client.records(VIFRecord.self)
        let poolRecord = try await client.records(PoolRecord.self).values.first
        let metrics = guestMetrics ? try await client.records(VMGuestMetricsRecord.self) : [:]
        let hostAddresses = guestMetrics ? try await client.hostInterfaceAddresses() : [:]
        let vdiUUID = Dictionary(uniqueKeysWithValues: vdis.map { ($0.key, $0.value.uuid) })
        let srUUID = Dictionary(uniqueKeysWithValues: srs.map { ($0.key, $0.value.uuid) })
        let vmUUID = Dictionary(uniqueKeysWithValues: vmRecords.map { ($0.key, $0.value.uuid) })
        let cbtTypes = Set(sms.values.filter(\.supportsCBT).map(\.type))
        func disks(_ vm: VMRecord) -> [ObservedDisk] {
            vm.vbds.compactMap { vbds[$0] }.filter { $0.type == "Disk" && !$0.vdi.isNull }.compactMap { vbd in
                guard let uuid = vdiUUID[vbd.vdi] else { return nil }
                return ObservedDisk(userdevice: vbd.userdevice, device: vbd.device, vdiUUID: uuid)
            }.sorted { (Int($0.userdevice) ?? 0) < (Int($1.userdevice) ?? 0) }
        }
        var vms: [ObservedVM] = []
        var snapshots: [ObservedSnapshot] = []
        var appliances: [ObservedAppliance] = []
        var templates: [String: String] = [:]
        var havenTemplates: [ObservedVM] = []
        var guestAddresses: [String: String] = [:]
        for (_, vm) in vmRecords {
            let addresses = metrics[vm.guestMetrics]?.addresses ?? []
            if vm.isRealVM && vm.otherConfig[OwnershipMarks.role] == OwnershipMarks.applianceRole {
                // Disks plugged in that are not the appliance's own: a transfer is using it.
                let foreign = vm.vbds.compactMap { vbds[$0] }.filter { $0.type == "Disk" && !$0.vdi.isNull && $0.currentlyAttached }
                    .compactMap { vdis[$0.vdi] }.filter { $0.otherConfig[OwnershipMarks.role] != OwnershipMarks.applianceDiskRole }.map(\.uuid).sorted()
                appliances.append(ObservedAppliance(
                    uuid: vm.uuid, name: vm.nameLabel, powerState: vm.powerState.rawValue, owner: vm.otherConfig[OwnershipMarks.owner] ?? "",
                    appliancePool: vm.otherConfig[OwnershipMarks.appliancePool] ?? "", staticAddress: vm.xenstoreData[MoverXenstore.ip],
                    addresses: addresses, foreignDisks: foreign))
                continue
            }
            for a in addresses where vm.isRealVM { guestAddresses[a] = vm.nameLabel }
            if vm.isATemplate && !vm.isASnapshot {
                templates[vm.nameLabel] = vm.uuid
                if vm.otherConfig[OwnershipMarks.owner] != nil {
                    var o = ObservedVM(uuid: vm.uuid, name: vm.nameLabel, powerState: vm.powerState.rawValue, tags: vm.tags, disks: disks(vm))
                    o.otherConfig = vm.otherConfig.filter { $0.key.hasPrefix("haven.") }
                    havenTemplates.append(o)
                }
            }
            if vm.isRealVM {
                var o = ObservedVM(uuid: vm.uuid, name: vm.nameLabel, powerState: vm.powerState.rawValue, tags: vm.tags, disks: disks(vm))
                o.networks = vm.vifs.compactMap { vifs[$0] }.sorted { $0.device < $1.device }.compactMap { networks[$0.network]?.nameLabel }
                o.otherConfig = vm.otherConfig.filter { $0.key.hasPrefix("haven.") }
                vms.append(o)
            } else if vm.isASnapshot {
                snapshots.append(ObservedSnapshot(uuid: vm.uuid, name: vm.nameLabel, snapshotOf: vmUUID[vm.snapshotOf] ?? "",
                                                  otherConfig: vm.otherConfig, disks: disks(vm)))
            }
        }
        var observedVDIs: [String: ObservedVDI] = [:]
        for (_, v) in vdis {
            observedVDIs[v.uuid] = ObservedVDI(uuid: v.uuid, name: v.nameLabel, srUUID: srUUID[v.sr] ?? "", size: v.virtualSize, type: v.type,
                                               cbtEnabled: v.cbtEnabled, isSnapshot: v.isASnapshot, snapshotOf: vdiUUID[v.snapshotOf] ?? "",
                                               otherConfig: v.otherConfig, vhdParent: v.smConfig["vhd-parent"])
        }
        var observedSRs: [String: ObservedSR] = [:]
        for (_, s) in srs {
            observedSRs[s.uuid] = ObservedSR(uuid: s.uuid, name: s.nameLabel, type: s.type, physicalSize: s.physicalSize,
                                             physicalUtilisation: s.physicalUtilisation, supportsCBT: cbtTypes.contains(s.type))
        }
        let nbd = networks.values.filter { $0.purpose.contains("nbd") || $0.purpose.contains("insecure_nbd") }
        var pool = ObservedPool(
            name: name, apiMajor: caps.apiMajor, apiMinor: caps.apiMinor, cbtLicensed: caps.cbtLicensed,
            vms: vms.sorted { $0.name < $1.name }, snapshots: snapshots, vdis: observedVDIs, srs: observedSRs,
            nbdNetworks: nbd.map(\.nameLabel).sorted())
        pool.nbdTLS = nbd.contains { $0.purpose.contains("nbd") }
        pool.networks = networks.values.map(\.nameLabel).sorted()
        pool.defaultSR = poolRecord.flatMap { srUUID[$0.defaultSR] }
        pool.appliances = appliances.sorted { ($0.name, $0.uuid) < ($1.name, $1.uuid) }
        pool.templates = templates
        pool.havenTemplates = havenTemplates.sorted { $0.uuid < $1.uuid }
        pool.guestAddresses = guestAddresses
        pool.hostAddresses = hostAddresses
        return pool
    }
}
