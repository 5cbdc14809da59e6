/// A cheap, stable digest (FNV-1a, 64 bits) of what a plan was made from. Not a security
/// measure: it tells a saved plan that the world moved on.
public struct Fingerprint {
    private var state: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    public mutating func add(_ s: String) {
        for b in s.utf8 {
            state ^= UInt64(b)
            state &*= 0x0000_0100_0000_01b3
        }
        state ^= 0xff
        state &*= 0x0000_0100_0000_01b3
    }

    public mutating func add(_ n: Int64) { add(String(n)) }
    public mutating func add(_ b: Bool) { add(b ? "1" : "0") }

    public var hex: String {
        let s = String(state, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}
