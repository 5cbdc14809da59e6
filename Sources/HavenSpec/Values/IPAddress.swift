import Foundation

/// An IPv4 or IPv6 address held as a 128-bit number so ranges of either family compare simply.
public struct IPAddress: Hashable, Sendable, Comparable, Codable, CustomStringConvertible {
    public enum Family: String, Sendable, Codable { case v4, v6 }

    public var family: Family
    public var value: UInt128

    public init(family: Family, value: UInt128) {
        self.family = family
        self.value = value
    }

    public static func parse(_ text: String) -> IPAddress? {
        if let v4 = parseV4(text) { return IPAddress(family: .v4, value: UInt128(v4)) }
        if let v6 = parseV6(text) { return IPAddress(family: .v6, value: v6) }
        return nil
    }

    static func parseV4(_ text: String) -> UInt32? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for p in parts {
            // Leading zeros are refused: `010` means octal to some tools and decimal to others.
            guard !p.isEmpty, p.count <= 3, p.allSatisfy({ $0.isASCII && $0.isNumber }),
                p.count == 1 || p.first != "0", let n = UInt32(p), n <= 255
            else { return nil }
            value = value << 8 | n
        }
        return value
    }

    static func parseV6(_ text: String) -> UInt128? {
        guard text.contains(":") else { return nil }
        var body = text
        var tailV4: UInt32?
        // An embedded IPv4 tail (`::ffff:10.0.0.1`) stands for the last two groups.
        if let lastColon = text.lastIndex(of: ":"), text[text.index(after: lastColon)...].contains(".") {
            guard let v4 = parseV4(String(text[text.index(after: lastColon)...])) else { return nil }
            tailV4 = v4
            body = String(text[...lastColon])
            if !body.hasSuffix("::") { body.removeLast() }
        }
        let halves = body.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ s: String) -> [UInt16]? {
            if s.isEmpty { return [] }
            var out: [UInt16] = []
            for g in s.split(separator: ":", omittingEmptySubsequences: false) {
                guard (1...4).contains(g.count), let v = UInt16(g, radix: 16) else { return nil }
                out.append(v)
            }
            return out
        }
        guard let head = groups(halves[0]) else { return nil }
        var all = head
        let wanted = tailV4 == nil ? 8 : 6
        if halves.count == 2 {
            guard let tail = groups(halves[1]), head.count + tail.count < wanted else { return nil }
            all += Array(repeating: 0, count: wanted - head.count - tail.count) + tail
        }
        guard all.count == wanted else { return nil }
        var value: UInt128 = 0
        for g in all { value = value << 16 | UInt128(g) }
        if let v4 = tailV4 { value = value << 32 | UInt128(v4) }
        return value
    }

    public var bitWidth: Int { family == .v4 ? 32 : 128 }

    public var description: String {
        switch family {
        case .v4:
            let v = UInt32(truncatingIfNeeded: value)
            return "\(v >> 24).\(v >> 16 & 0xff).\(v >> 8 & 0xff).\(v & 0xff)"
        case .v6:
            var groups: [UInt16] = (0..<8).map { UInt16(truncatingIfNeeded: value >> UInt128(16 * (7 - $0))) }
            // Compress the longest run of zero groups (RFC 5952).
            var best = (start: -1, length: 0)
            var i = 0
            while i < 8 {
                if groups[i] == 0 {
                    var j = i
                    while j < 8, groups[j] == 0 { j += 1 }
                    if j - i > best.length, j - i > 1 { best = (i, j - i) }
                    i = j
                } else {
                    i += 1
                }
            }
            let hex = { (g: [UInt16]) in g.map { String($0, radix: 16) }.joined(separator: ":") }
            if best.start < 0 { return hex(groups) }
            let tail = Array(groups[(best.start + best.length)...])
            groups = Array(groups[..<best.start])
            return hex(groups) + "::" + hex(tail)
        }
    }

    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        (lhs.family == .v4 ? 0 : 1, lhs.value) < (rhs.family == .v4 ? 0 : 1, rhs.value)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let ip = Self.parse(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bad IP"))
        }
        self = ip
    }
}

/// An inclusive range of addresses of one family, written as a single address, `a-b`
/// (or `10.0.0.10-20`, last-octet shorthand) or a CIDR block.
///
/// A CIDR block of IPv4 with a prefix of /30 or shorter leaves out its network and broadcast
/// addresses, since an appliance can use neither.
public struct AddressRange: Hashable, Sendable, TextValue {
    public var lower: IPAddress
    public var upper: IPAddress
    public var text: String

    public var count: UInt128 { upper.value - lower.value + 1 }

    public func overlaps(_ other: AddressRange) -> Bool {
        lower.family == other.lower.family && lower.value <= other.upper.value && other.lower.value <= upper.value
    }

    public func contains(_ ip: IPAddress) -> Bool {
        ip.family == lower.family && lower.value <= ip.value && ip.value <= upper.value
    }

    public var description: String { lower == upper ? "\(lower)" : "\(lower)-\(upper)" }

    public static func parse(_ raw: String) -> Result<AddressRange, ValueError> {
        let text = raw.trimmingCharacters(in: .whitespaces)
        if let slash = text.firstIndex(of: "/") {
            let base = String(text[..<slash])
            let prefixText = text[text.index(after: slash)...]
            guard let ip = IPAddress.parse(base) else {
                return .failure(ValueError("'\(base)' is not an IP address"))
            }
            guard let prefix = Int(prefixText), (0...ip.bitWidth).contains(prefix) else {
                return .failure(ValueError("'/\(prefixText)' is not a prefix length for \(ip.family == .v4 ? "IPv4 (0-32)" : "IPv6 (0-128)")"))
            }
            let hostBits = ip.bitWidth - prefix
            let hostMask: UInt128 = hostBits == 0 ? 0 : (hostBits >= 128 ? UInt128.max : (UInt128(1) << UInt128(hostBits)) - 1)
            guard ip.value & hostMask == 0 else {
                let network = IPAddress(family: ip.family, value: ip.value & ~hostMask)
                return .failure(ValueError("'\(text)' has host bits set; the network is \(network)/\(prefix)"))
            }
            var low = ip.value
            var high = ip.value | hostMask
            if ip.family == .v4, prefix <= 30 {
                low += 1
                high -= 1
            }
            return .success(
                AddressRange(
                    lower: IPAddress(family: ip.family, value: low), upper: IPAddress(family: ip.family, value: high),
                    text: text))
        }
        if let dash = text.firstIndex(of: "-") {
            let a = String(text[..<dash]).trimmingCharacters(in: .whitespaces)
            let b = String(text[text.index(after: dash)...]).trimmingCharacters(in: .whitespaces)
            guard let low = IPAddress.parse(a) else { return .failure(ValueError("'\(a)' is not an IP address")) }
            var high = IPAddress.parse(b)
            if high == nil, low.family == .v4, let octet = UInt8(b) {
                high = IPAddress(family: .v4, value: (low.value & ~0xff) | UInt128(octet))
            }
            guard let high else { return .failure(ValueError("'\(b)' is not an IP address")) }
            guard high.family == low.family else {
                return .failure(ValueError("range '\(text)' mixes IPv4 and IPv6"))
            }
            guard low.value <= high.value else {
                return .failure(ValueError("range '\(text)' runs backwards (\(low) is after \(high))"))
            }
            return .success(AddressRange(lower: low, upper: high, text: text))
        }
        guard let ip = IPAddress.parse(text) else {
            return .failure(ValueError("'\(text)' is not an IP address, a range (a-b) or a CIDR block (a/n)"))
        }
        return .success(AddressRange(lower: ip, upper: ip, text: text))
    }

    init(lower: IPAddress, upper: IPAddress, text: String) {
        self.lower = lower
        self.upper = upper
        self.text = text
    }
}
