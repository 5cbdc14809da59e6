/// A half-open byte range of a disk.
public struct ByteRange: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var offset: Int64
    public var length: Int

    public init(offset: Int64, length: Int) {
        self.offset = offset
        self.length = length
    }

    public var end: Int64 { offset + Int64(length) }
    public var description: String { "[\(offset), \(end))" }
    public static func < (a: ByteRange, b: ByteRange) -> Bool { a.offset < b.offset }
}
