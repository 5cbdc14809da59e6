import Foundation
import Testing

@testable import HavenData

@Suite struct ChunkIDTests {
    /// Deterministic pseudo-random 32-byte ids (xorshift), so failures reproduce.
    static func ids(_ count: Int) -> [[UInt8]] {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        return (0..<count).map { _ in
            (0..<32).map { _ in
                state ^= state << 13
                state ^= state >> 7
                state ^= state << 17
                return UInt8(truncatingIfNeeded: state)
            }
        }
    }

    @Test func bytesHexAndOrderRoundTrip() throws {
        var raw = Self.ids(500)
        // Ids that differ only in their last byte, or only in the first: order must use all 32.
        raw.append([UInt8](repeating: 7, count: 31) + [1])
        raw.append([UInt8](repeating: 7, count: 31) + [2])
        raw.append([1] + [UInt8](repeating: 255, count: 31))
        let ids = raw.map(ChunkID.init(bytes:))
        for (b, id) in zip(raw, ids) {
            #expect(id.bytes == b)
            #expect(ChunkID(hex: id.hex) == id)
            #expect(id.hex == b.map { String(format: "%02x", $0) }.joined())
        }
        let byID = ids.sorted().map(\.bytes)
        let byBytes = raw.sorted { $0.lexicographicallyPrecedes($1) }
        #expect(byID == byBytes)
        #expect(Set(ids).count == Set(raw).count)
        #expect(ChunkID(bytes: raw[501]) != ChunkID(bytes: raw[502]))
    }

    @Test func zeroAndHexErrors() {
        #expect(ChunkID.zero.isZero)
        #expect(!ChunkID(bytes: [UInt8](repeating: 0, count: 31) + [1]).isZero)
        #expect(ChunkID(hex: String(repeating: "g", count: 64)) == nil)
        #expect(ChunkID(hex: "abcd") == nil)
        #expect(ChunkID(hex: String(repeating: "AB", count: 32))?.bytes == [UInt8](repeating: 0xAB, count: 32))
    }
}
