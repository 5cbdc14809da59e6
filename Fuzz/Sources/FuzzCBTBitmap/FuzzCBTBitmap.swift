import FuzzDriver
import HavenData

/// The changed-block bitmap of `VDI.list_changed_blocks` with the disk size from the VDI record,
/// both from the pool: the first 8 bytes are the size (little endian), the rest is the text
/// (base64 as xapi sends it, or, when the first byte is odd, raw bytes the target encodes).
@main enum Main {
    static func main() {
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, fuzz))
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    guard size >= 9 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var diskSize: Int64 = 0
    for i in 0..<8 { diskSize |= Int64(bytes[i + 1]) << (8 * Int64(i)) }
    let rest = bytes[9...]
    let text = bytes[0] & 1 == 1 ? Data(rest).base64EncodedString() : String(decoding: rest, as: UTF8.self)
    if let changed = try? ChangedBlocks(base64: text, diskSize: diskSize) {
        _ = changed.ranges(within: 1 << 20)
        _ = changed.changedBytes
        _ = changed.base64
    }
    return 0
}

import Foundation
