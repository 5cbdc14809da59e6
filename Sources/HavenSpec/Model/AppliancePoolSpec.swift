import Foundation

/// Data-mover appliances (ABDs) on one pool, and the addresses they may use.
public struct AppliancePoolSpec: ResourceSpec, Hashable {
    public static let kind = ResourceKind.appliancePool

    public var pool: Located<String>
    public var template: String
    public var sr: String
    public var network: String
    public var addresses: [Located<AddressRange>]
    public var netmask: IPAddress?
    public var gateway: IPAddress?
    public var dns: [IPAddress]
    public var dhcpFallback: Bool
    public var max: Int
    public var memory: ByteSize

    public static let defaultMemory = ByteSize.mebibytes(128)
    public static let defaultMax = 2

    public static let shape = ObjectShape(
        path: "spec",
        fields: [
            FieldInfo("pool", .reference(kind: "Pool"), required: true, "The Pool the appliances run on."),
            FieldInfo("template", .text, required: true, "name_label of the appliance template."),
            FieldInfo("sr", .text, required: true, "name_label of the SR the appliances' disks live on."),
            FieldInfo("network", .text, required: true, "name_label of the network the appliances attach to."),
            FieldInfo("addresses", .list(.addressRange), default: "[]",
                      "Static addresses: single IPs, ranges a-b (or 10.0.0.10-20) and CIDR blocks."),
            FieldInfo("netmask", .ipAddress, "Netmask for static addresses (required when addresses are given)."),
            FieldInfo("gateway", .ipAddress, "Default gateway for static addresses."),
            FieldInfo("dns", .list(.ipAddress), default: "[]", "DNS servers for static addresses."),
            FieldInfo("dhcpFallback", .boolean, default: "false", "Use DHCP once the static addresses run out."),
            FieldInfo("max", .integer(min: 1, max: 64), default: "\(defaultMax)", "Most appliances kept on the pool."),
            FieldInfo("memory", .size, default: defaultMemory.description, "Memory of each appliance (at least 64Mi)."),
        ])
}

extension AppliancePoolSpec {
    init(_ r: MappingReader) {
        let ctx = r.context
        pool = r.string("pool") ?? Located("", at: r.location)
        template = r.string("template")?.value ?? ""
        sr = r.string("sr")?.value ?? ""
        network = r.string("network")?.value ?? ""
        addresses = []
        var unreadableAddresses = false
        for item in r.stringList("addresses") ?? [] {
            switch AddressRange.parse(item.value) {
            case .success(let range): addresses.append(Located(range, at: item.location))
            case .failure(let e):
                unreadableAddresses = true
                ctx.sink.error(.invalidAddress, at: item.location, "invalid address '\(item.value)' in 'spec.addresses': \(e.message)")
            }
        }
        // The same address listed twice within one pool is as wrong as two pools sharing it.
        for (i, a) in addresses.enumerated() {
            if let earlier = addresses[..<i].first(where: { $0.value.overlaps(a.value) }) {
                ctx.sink.error(
                    .overlappingAddresses, at: a.location,
                    "address range \(a.value) overlaps \(earlier.value) listed at line \(earlier.location.line) of the same AppliancePool")
            }
        }
        netmask = Self.address(r, "netmask")
        gateway = Self.address(r, "gateway")
        dns = []
        for item in r.stringList("dns") ?? [] {
            if let ip = IPAddress.parse(item.value) {
                dns.append(ip)
            } else {
                ctx.sink.error(.invalidAddress, at: item.location, "'\(item.value)' in 'spec.dns' is not an IP address")
            }
        }
        dhcpFallback = r.bool("dhcpFallback") ?? false
        max = r.int("max") ?? Self.defaultMax
        memory = Self.defaultMemory
        if let m = r.size("memory") {
            if m < .mebibytes(64) {
                ctx.sink.error(.invalidSize, at: r.valueLocation("memory"), "'spec.memory' must be at least 64Mi, found \(m)")
            } else {
                memory = m
            }
        }
        checkAddressing(r, countAddresses: !unreadableAddresses)
    }

    private static func address(_ r: MappingReader, _ key: String) -> IPAddress? {
        guard let text = r.string(key) else { return nil }
        guard let ip = IPAddress.parse(text.value) else {
            r.context.sink.error(.invalidAddress, at: text.location, "'spec.\(key)' must be an IP address, found '\(text.value)'")
            return nil
        }
        return ip
    }

    private func checkAddressing(_ r: MappingReader, countAddresses: Bool) {
        let ctx = r.context
        var prefix: Int?
        if let netmask {
            let bits = netmask.value
            let width = netmask.bitWidth
            let ones = (0..<width).prefix { bits & (UInt128(1) << UInt128(width - 1 - $0)) != 0 }.count
            let expected: UInt128 = ones == 0 ? 0 : ((UInt128(1) << UInt128(ones)) - 1) << UInt128(width - ones)
            if netmask.family != .v4 || bits != expected {
                ctx.sink.error(
                    .invalidAddress, at: r.valueLocation("netmask"),
                    "'spec.netmask' \(netmask) is not a valid IPv4 netmask (ones followed by zeros, e.g. 255.255.255.0)")
            } else {
                prefix = ones
            }
        } else if addresses.contains(where: { $0.value.lower.family == .v4 }) {
            ctx.sink.error(.missingField, at: r.keyLocation("addresses"), "\(ctx.resource): 'spec.netmask' is required with static IPv4 addresses")
        }
        if let prefix, let gateway, gateway.family == .v4 {
            let mask: UInt128 = prefix == 0 ? 0 : ((UInt128(1) << UInt128(prefix)) - 1) << UInt128(32 - prefix)
            for a in addresses where a.value.lower.family == .v4 {
                if a.value.lower.value & mask != gateway.value & mask || a.value.upper.value & mask != gateway.value & mask {
                    ctx.sink.error(
                        .invalidAddress, at: a.location,
                        "address range \(a.value) is outside the gateway's subnet \(IPAddress(family: .v4, value: gateway.value & mask))/\(prefix)")
                }
                if a.value.contains(gateway) {
                    ctx.sink.error(.invalidAddress, at: a.location, "address range \(a.value) contains the gateway \(gateway)")
                }
            }
        }
        let staticCount = addresses.reduce(UInt128(0)) { $0 + $1.value.count }
        if countAddresses && !dhcpFallback && staticCount < UInt128(max) {
            let loc = r.has("max") ? r.valueLocation("max") : r.keyLocation("addresses")
            let what = staticCount == 0 ? "no static addresses" : "only \(staticCount) static address\(staticCount == 1 ? "" : "es")"
            ctx.sink.error(
                .invalidValue, at: loc,
                "\(ctx.resource) may run \(max) appliance\(max == 1 ? "" : "s") but has \(what) and dhcpFallback is off; add addresses, lower 'max' or set 'dhcpFallback: true'")
        }
    }
}
