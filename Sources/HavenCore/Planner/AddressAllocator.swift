import Foundation
import HavenSpec

/// Hands out appliance addresses: the first address of the static list (in the order written)
/// that nobody holds — no VM of the pool reports it in its guest metrics, no appliance holds it,
/// it is not the gateway or a DNS server — then DHCP when the list is used up and the
/// AppliancePool allows it. Pure; the planner and the lease both use it.
public struct AddressAllocator: Sendable {
    public var ranges: [AddressRange]
    public var dhcpFallback: Bool
    /// Addresses that are not free, with who holds them (for the plan's reason).
    public private(set) var taken: [IPAddress: String]

    public init(ranges: [AddressRange], dhcpFallback: Bool, taken: [IPAddress: String]) {
        self.ranges = ranges
        self.dhcpFallback = dhcpFallback
        self.taken = taken
    }

    public init(_ settings: AppliancePoolSettings, taken: [IPAddress: String]) {
        var t = taken
        for ip in settings.reserved where t[ip] == nil { t[ip] = "reserved (gateway or DNS server)" }
        self.init(ranges: settings.ranges, dhcpFallback: settings.dhcpFallback, taken: t)
    }

    public enum Allocation: Sendable, Hashable {
        case staticAddress(IPAddress)
        case dhcp
        /// No static address is free and DHCP is off.
        case exhausted
    }

    /// The next address, reserved so the next call gives another one.
    public mutating func next(for holder: String) -> Allocation {
        if let ip = firstFree() {
            taken[ip] = holder
            return .staticAddress(ip)
        }
        return dhcpFallback ? .dhcp : .exhausted
    }

    /// Scans each range from its start, skipping what is taken: at most (taken in range) + 1 steps,
    /// whatever the size of a CIDR block.
    func firstFree() -> IPAddress? {
        for r in ranges {
            var v = r.lower.value
            while true {
                let ip = IPAddress(family: r.lower.family, value: v)
                if taken[ip] == nil { return ip }
                if v == r.upper.value { break }
                v += 1
            }
        }
        return nil
    }

    /// How many static addresses of the list exist (capped: a /8 need not be counted exactly).
    public var staticCount: UInt128 { ranges.reduce(0) { $0 + $1.count } }

    /// The taken addresses that lie in the static list, with their holders, in address order.
    public var takenInList: [(IPAddress, String)] {
        taken.filter { ip, _ in ranges.contains { $0.contains(ip) } }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }
}
