import FuzzDriver
import Foundation
import DiskFormats

/// The disk formats haven reads back: a dynamic VHD (first byte even) and an XVA archive (odd),
/// streamed in pieces of a size the input chooses, the way they arrive from a file or a pool.
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
    guard size >= 2 else { return 0 }
    let piece = Int(data[1]) * 7 + 1
    let input = UnsafeRawBufferPointer(start: data + 2, count: size - 2)
    if data[0] & 1 == 0 {
        var position = 0
        _ = try? VHD.read(from: { buffer in
            let n = min(buffer.count, piece, input.count - position)
            guard n > 0 else { return 0 }
            buffer.baseAddress!.copyMemory(from: input.baseAddress! + position, byteCount: n)
            position += n
            return n
        }, write: { offset, bytes in
            precondition(bytes.count > 0)
            _ = offset
        })
    } else {
        let extractor = XVA.DiskExtractor(choose: { metadata in
            // The first VDI the metadata names, or the first export-local id.
            let text = String(decoding: metadata, as: UTF8.self)
            let id = text.range(of: "Ref:").map { r in "Ref:" + text[r.upperBound...].prefix { $0.isNumber } } ?? "Ref:0"
            return XVA.Target(id: id, size: 64 << 20)
        }, write: { offset, bytes in
            precondition(offset >= 0 && offset + Int64(bytes.count) <= 64 << 20, "a chunk outside the disk")
        })
        var position = 0
        do {
            while position < input.count {
                let n = min(piece, input.count - position)
                try extractor.feed(UnsafeRawBufferPointer(rebasing: input[position..<(position + n)]))
                position += n
            }
            _ = try extractor.finish()
        } catch {}
    }
    return 0
}
