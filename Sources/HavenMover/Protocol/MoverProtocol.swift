/// Constants of the mover protocol (docs/mover-protocol.md).
public enum MoverProtocol {
    /// The version this build speaks; a peer offers a range and the server picks the highest shared.
    public static let version: UInt16 = 1
    /// The data port of an appliance.
    public static let defaultPort = 2811
    /// One block: the granularity of xapi's CBT bitmaps.
    public static let blockSize = 65_536
    /// The largest frame accepted (type byte and payload): a block with its header, a bitmap of a
    /// range of 8 Mi blocks (512 GiB), a batch of hashes.
    public static let maxFrame = (1 << 20) + 4096
    /// The largest window a server grants, in blocks (4 MiB in flight per stream).
    public static let maxWindow = 64
    /// Hashes per HASHES frame.
    static let hashesPerFrame = 1024
    /// The most blocks one request's bitmap may cover (its bytes must fit in a frame).
    static let maxBitmapBlocks: Int64 = 8 << 20
    static let magic: [UInt8] = Array("HVNMOVER".utf8)
}

/// Frame types. Requests go client → server; the others answer them.
enum FrameType: UInt8 {
    case hello = 0x01, welcome = 0x02, error = 0x03
    case identify = 0x10, identity = 0x11, listDisks = 0x12, diskList = 0x13
    case read = 0x20, block = 0x21, end = 0x22, ack = 0x23, ready = 0x24, progress = 0x25
    case write = 0x30, endWrite = 0x31
    case hash = 0x40, hashes = 0x41
    case push = 0x50, pull = 0x51
    case probe = 0x60
}

/// One frame: its type and payload (the 4-byte length prefix is the transport's).
struct Frame {
    var type: FrameType
    var payload: [UInt8]
}
