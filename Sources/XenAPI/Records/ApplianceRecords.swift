import Foundation

/// VM_guest_metrics: what the guest agent reports, among it the guest's addresses
/// (`networks`: `0/ip`, `0/ipv4/0`, `0/ipv6/0`, … keyed by VIF device).
public struct VMGuestMetricsRecord: XenRecord {
    public static let className = "VM_guest_metrics"
    public var uuid: String
    public var networks: [String: String]
    public var live: Bool

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        networks = f.map("networks")
        live = f.bool("live")
    }

    /// Every address the guest reports, IPv4 first, without duplicates (`0/ip` repeats `0/ipv4/0`).
    public var addresses: [String] {
        let keys = networks.keys.filter { k in
            let parts = k.split(separator: "/")
            return parts.count >= 2 && Int(parts[0]) != nil && ["ip", "ipv4", "ipv6"].contains(parts[1])
        }.sorted { (a: String, b: String) -> Bool in
            let (va, vb) = (a.contains("ipv6") ? 1 : 0, b.contains("ipv6") ? 1 : 0)
            return va != vb ? va < vb : a < b
        }
        var out: [String] = []
        for k in keys { if let v = networks[k], !v.isEmpty, !out.contains(v) { out.append(v) } }
        return out
    }
}

extension VMRecord {
    /// `xenstore_data`: keys handed to the guest at boot (`vm-data/…`).
    public var xenstoreData: [String: String] { fields.map("xenstore_data") }
    /// The VM_guest_metrics of a VM whose guest agent ever reported (NULL otherwise).
    public var guestMetrics: XenRef<VMGuestMetricsRecord> { fields.ref("guest_metrics") }
}

extension XenAPIClient {
    /// Replaces a VM's whole `xenstore_data` map.
    public func setXenstoreData(_ vm: VMRef, _ data: [String: String]) async throws {
        _ = try await call(.vmSetXenstoreData, [vm.value, .map(data)])
    }

    /// Sets the four memory limits at once (static_min ≤ dynamic_min ≤ dynamic_max ≤ static_max);
    /// the VM must be halted.
    public func setMemoryLimits(_ vm: VMRef, staticMin: Int64, staticMax: Int64, dynamicMin: Int64, dynamicMax: Int64) async throws {
        _ = try await call(.vmSetMemoryLimits, [vm.value, .int(staticMin), .int(staticMax), .int(dynamicMin), .int(dynamicMax)])
    }

    /// The addresses a VM's guest reports, [] when its guest agent never reported.
    public func guestAddresses(_ vm: VMRef) async throws -> [String] {
        let ref = try await record(vm).guestMetrics
        guard !ref.isNull else { return [] }
        return try await record(ref).addresses
    }

    /// Address -> "host NAME" for every IP configured on a host interface (PIF) of the pool: two
    /// calls, whatever the number of hosts.
    public func hostInterfaceAddresses() async throws -> [String: String] {
        let hosts = try await records(HostRecord.self)
        var out: [String: String] = [:]
        for (_, pif) in try await records(PIFRecord.self) where !pif.ip.isEmpty {
            out[pif.ip] = "host \(hosts[pif.host]?.nameLabel ?? pif.host.raw)"
        }
        return out
    }
}
