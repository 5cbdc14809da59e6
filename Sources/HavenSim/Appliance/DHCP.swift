import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A simulated network's DHCP pool, `FIRST-LAST` (IPv4, inclusive).
struct DHCPRange {
    let first: UInt32
    let last: UInt32

    init(_ text: String, network: String) throws {
        let parts = text.split(separator: "-").map { String($0).trimmingCharacters(in: .whitespaces) }
        guard parts.count == 2, let a = Self.number(parts[0]), let b = Self.number(parts[1]), a <= b else {
            throw SimError("network \(network): dhcp '\(text)' is not FIRST-LAST (two IPv4 addresses, the first not after the last)")
        }
        first = a
        last = b
    }

    static func number(_ ip: String) -> UInt32? {
        var addr = in_addr()
        guard inet_pton(AF_INET, ip, &addr) == 1 else { return nil }
        return UInt32(bigEndian: addr.s_addr)
    }

    static func text(_ n: UInt32) -> String { "\(n >> 24).\((n >> 16) & 255).\((n >> 8) & 255).\(n & 255)" }

    /// The lowest address of the range not in `taken`.
    func firstFree(excluding taken: Set<String>) -> String? {
        var n = first
        while true {
            let ip = Self.text(n)
            if !taken.contains(ip) { return ip }
            if n == last { return nil }
            n += 1
        }
    }
}
