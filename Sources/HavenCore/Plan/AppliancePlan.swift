import Foundation
import HavenSpec

/// An AppliancePool as execution needs it: enough to provision more appliances while transfers
/// run (the lease), without reading the configuration again.
public struct AppliancePoolSettings: Sendable, Codable, Hashable {
    public var name: String
    public var pool: String
    public var template: String
    public var sr: String
    public var network: String
    /// The static addresses as written (single IPs, ranges, CIDR blocks), in order.
    public var addresses: [String]
    public var netmask: String?
    public var gateway: String?
    public var dns: [String]
    public var dhcpFallback: Bool
    public var max: Int
    public var memory: Int64

    public init(name: String, pool: String, template: String, sr: String, network: String, addresses: [String], netmask: String?,
                gateway: String?, dns: [String], dhcpFallback: Bool, max: Int, memory: Int64) {
        self.name = name
        self.pool = pool
        self.template = template
        self.sr = sr
        self.network = network
        self.addresses = addresses
        self.netmask = netmask
        self.gateway = gateway
        self.dns = dns
        self.dhcpFallback = dhcpFallback
        self.max = max
        self.memory = memory
    }

    public init(_ a: AppliancePool) {
        let s = a.spec
        self.init(name: a.name, pool: s.pool.value, template: s.template, sr: s.sr, network: s.network, addresses: s.addresses.map(\.value.text),
                  netmask: s.netmask?.description, gateway: s.gateway?.description, dns: s.dns.map(\.description), dhcpFallback: s.dhcpFallback,
                  max: s.max, memory: Int64(clamping: s.memory.bytes))
    }

    /// The static ranges, in the order written (validated when the configuration was loaded).
    public var ranges: [AddressRange] { addresses.compactMap { try? AddressRange.parse($0).get() } }

    /// Never handed to an appliance: the gateway and the DNS servers.
    public var reserved: Set<IPAddress> { Set(([gateway].compactMap { $0 } + dns).compactMap(IPAddress.parse)) }

    /// The address settings for one appliance: `ip` static, or nil for DHCP.
    public func address(_ ip: IPAddress?) -> ApplianceAddress {
        guard let ip else { return ApplianceAddress(ip: nil, netmask: nil, gateway: nil, dns: []) }
        return ApplianceAddress(ip: ip.description, netmask: netmask, gateway: gateway, dns: dns)
    }
}

/// How an appliance is addressed: a static address with its netmask, gateway and DNS servers
/// (handed over in `xenstore_data`), or DHCP (`ip` nil).
public struct ApplianceAddress: Sendable, Codable, Hashable {
    public var ip: String?
    public var netmask: String?
    public var gateway: String?
    public var dns: [String]

    public init(ip: String?, netmask: String?, gateway: String?, dns: [String]) {
        self.ip = ip
        self.netmask = netmask
        self.gateway = gateway
        self.dns = dns
    }

    public var isStatic: Bool { ip != nil }
}

/// One appliance to provision: clone `template` onto the SR, one VIF on `network`, `memory`,
/// haven's marks, the address in `xenstore_data`, start.
public struct ApplianceProvision: Sendable, Codable, Hashable {
    public var appliancePool: String
    public var name: String
    public var template: String
    public var templateUUID: String
    public var srUUID: String
    public var srName: String
    public var network: String
    public var memory: Int64
    public var address: ApplianceAddress

    public init(appliancePool: String, name: String, template: String, templateUUID: String, srUUID: String, srName: String, network: String,
                memory: Int64, address: ApplianceAddress) {
        self.appliancePool = appliancePool
        self.name = name
        self.template = template
        self.templateUUID = templateUUID
        self.srUUID = srUUID
        self.srName = srName
        self.network = network
        self.memory = memory
        self.address = address
    }
}

/// An existing appliance to start or remove.
public struct ApplianceTarget: Sendable, Codable, Hashable {
    public var appliancePool: String
    public var uuid: String
    public var name: String
    /// Set for a copy a run left before recording it: the appliance intent that proves it is haven's.
    public var intent: String?

    public init(appliancePool: String, uuid: String, name: String, intent: String? = nil) {
        self.appliancePool = appliancePool
        self.uuid = uuid
        self.name = name
        self.intent = intent
    }
}

/// Appliance names: `haven-<AppliancePool>-<n>`, the lowest free n.
public enum ApplianceNaming {
    public static func name(_ appliancePool: String, _ index: Int) -> String { "haven-\(appliancePool)-\(index)" }

    /// The lowest-numbered name not in `taken`.
    public static func next(_ appliancePool: String, taken: Set<String>) -> String {
        var i = 1
        while taken.contains(name(appliancePool, i)) { i += 1 }
        return name(appliancePool, i)
    }

    /// `haven-abd-2` before `haven-abd-10`.
    public static func order(_ a: String, _ b: String) -> Bool {
        let (na, nb) = (index(a), index(b))
        return na == nb ? a < b : (na ?? Int.max) < (nb ?? Int.max)
    }

    static func index(_ name: String) -> Int? { name.split(separator: "-").last.flatMap { Int($0) } }
}
