import CZstd
import Foundation

/// Per-thread compression state and scratch space for chunks: a zstd context pair (creating one
/// per call costs more than compressing a small chunk) and buffers reused from chunk to chunk.
public final class ChunkCodec {
    let cctx: OpaquePointer
    let dctx: OpaquePointer
    /// Header room plus the worst-case compressed size of a chunk.
    var out: UnsafeMutableRawBufferPointer
    /// A chunk file as read from disk.
    var file: UnsafeMutableRawBufferPointer

    public init(chunkSize: Int) {
        cctx = ZSTD_createCCtx()
        dctx = ZSTD_createDCtx()
        let cap = 64 + ZSTD_compressBound(max(chunkSize, 32 * 1024))
        out = .allocate(byteCount: cap, alignment: 64)
        file = .allocate(byteCount: cap, alignment: 64)
    }

    deinit {
        ZSTD_freeCCtx(cctx)
        ZSTD_freeDCtx(dctx)
        out.deallocate()
        file.deallocate()
    }

    func ensure(_ capacity: Int) {
        if out.count < capacity {
            out.deallocate()
            out = .allocate(byteCount: capacity, alignment: 64)
        }
        if file.count < capacity {
            file.deallocate()
            file = .allocate(byteCount: capacity, alignment: 64)
        }
    }

    /// Compresses into `out` starting at `offset`; returns the compressed length.
    func compress(_ input: UnsafeRawBufferPointer, level: Int32, at offset: Int) throws -> Int {
        ensure(offset + ZSTD_compressBound(input.count))
        let n = ZSTD_compressCCtx(cctx, out.baseAddress! + offset, out.count - offset, input.baseAddress, input.count, level)
        if ZSTD_isError(n) != 0 { throw DataError(.compression, "zstd", String(cString: ZSTD_getErrorName(n))) }
        return n
    }

    func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = ZSTD_decompressDCtx(dctx, output.baseAddress, output.count, input.baseAddress, input.count)
        if ZSTD_isError(n) != 0 { throw DataError(.compression, "zstd", String(cString: ZSTD_getErrorName(n))) }
        return n
    }

    /// One codec per thread, kept for the thread's life.
    static func current(chunkSize: Int) -> ChunkCodec {
        let key = "haven.chunk-codec"
        if let c = Thread.current.threadDictionary[key] as? ChunkCodec {
            c.ensure(64 + ZSTD_compressBound(chunkSize))
            return c
        }
        let c = ChunkCodec(chunkSize: chunkSize)
        Thread.current.threadDictionary[key] = c
        return c
    }
}
