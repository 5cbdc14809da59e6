import CZstd
import Foundation

/// zstd compression of whole chunks.
enum Zstd {
    static func compress(_ input: UnsafeRawBufferPointer, level: Int32) throws -> [UInt8] {
        let bound = ZSTD_compressBound(input.count)
        var out = [UInt8](repeating: 0, count: bound)
        let n = out.withUnsafeMutableBytes { ZSTD_compress($0.baseAddress, bound, input.baseAddress, input.count, level) }
        if ZSTD_isError(n) != 0 {
            throw DataError(.compression, "zstd", String(cString: ZSTD_getErrorName(n)))
        }
        out.removeLast(bound - n)
        return out
    }

    static func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = ZSTD_decompress(output.baseAddress, output.count, input.baseAddress, input.count)
        if ZSTD_isError(n) != 0 {
            throw DataError(.compression, "zstd", String(cString: ZSTD_getErrorName(n)))
        }
        return n
    }
}
