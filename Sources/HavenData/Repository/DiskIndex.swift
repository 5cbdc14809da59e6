import Foundation

/// Where a disk version's chunk list lives: a tree of index pages stored as chunks. A leaf page
/// holds up to 1,024 chunk ids (32 KiB); upper pages hold up to 1,024 ids of pages below. A
/// version costs only the pages that changed: unchanged pages are the same chunks as before.
public struct IndexRoot: Codable, Sendable, Hashable {
    public var root: String
    /// 0 when the root is itself a leaf.
    public var depth: Int
    public var entries: Int
}

enum DiskIndex {
    static let fanout = 1024

    /// Stores the entries as pages; returns the root and the bytes newly written.
    static func write(_ entries: [ChunkID], to repo: BackupRepository) throws -> (IndexRoot, Int) {
        var level = entries
        var depth = 0
        var written = 0
        if level.isEmpty { level = [] }
        while true {
            var parents: [ChunkID] = []
            var i = 0
            repeat {
                let page = Array(level[i..<min(i + fanout, level.count)])
                var bytes: [UInt8] = []
                bytes.reserveCapacity(page.count * 32)
                for id in page { bytes += id.bytes }
                let id = bytes.withUnsafeBytes { repo.chunkID(of: $0) }
                written += try bytes.withUnsafeBytes { try repo.putChunk(id, $0) }
                parents.append(id)
                i += fanout
            } while i < level.count
            if parents.count == 1 {
                return (IndexRoot(root: parents[0].hex, depth: depth, entries: entries.count), written)
            }
            level = parents
            depth += 1
        }
    }

    /// Reads every entry of a version; the leaf pages (a thousand for a 64 GiB disk in 64 KiB
    /// chunks) on several threads.
    static func read(_ root: IndexRoot, from repo: BackupRepository) throws -> [ChunkID] {
        guard let id = ChunkID(hex: root.root) else { throw DataError(.badManifest, root.root, "bad index root") }
        var level = [id]
        for _ in 0..<root.depth { level = try level.flatMap { try page($0, repo) } }
        let entries = try leaves(level, repo).flatMap { $0 }
        guard entries.count == root.entries else {
            throw DataError(.badManifest, root.root, "index has \(entries.count) entries, the manifest says \(root.entries)")
        }
        return entries
    }

    /// Every page id of the tree (for GC and verify), along with the entries.
    static func walk(_ root: IndexRoot, from repo: BackupRepository) throws -> (pages: [ChunkID], entries: [ChunkID]) {
        guard let id = ChunkID(hex: root.root) else { throw DataError(.badManifest, root.root, "bad index root") }
        var pages = [id]
        var level = [id]
        for _ in 0..<root.depth {
            level = try level.flatMap { try page($0, repo) }
            pages += level
        }
        return (pages, try level.flatMap { try page($0, repo) })
    }

    /// The pages `ids`, in order, read by up to as many threads as there are cores.
    static func leaves(_ ids: [ChunkID], _ repo: BackupRepository) throws -> [[ChunkID]] {
        let threads = min(ProcessInfo.processInfo.activeProcessorCount, ids.count / 4)
        guard threads > 1 else { return try ids.map { try page($0, repo) } }
        let pages = PageSlots(count: ids.count)
        let cursor = IndexCursor(Array(ids.indices))
        try runThreads(threads, name: "index-read") { _ in
            while let i = cursor.next() { pages.set(i, try page(ids[i], repo)) }
        }
        return pages.all
    }

    static func page(_ id: ChunkID, _ repo: BackupRepository) throws -> [ChunkID] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: fanout * 32, alignment: 16)
        defer { buffer.deallocate() }
        let n = try repo.getChunk(id, into: buffer)
        guard n % 32 == 0 else { throw DataError(.corruptChunk, id.hex, "index page length \(n) is not a multiple of 32") }
        return (0..<(n / 32)).map { ChunkID(raw: UnsafeRawBufferPointer(rebasing: buffer[($0 * 32)..<($0 * 32 + 32)])) }
    }
}

/// Results filled in by several threads, each slot once.
final class PageSlots: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var slots: [[ChunkID]]
    init(count: Int) { slots = Array(repeating: [], count: count) }
    func set(_ i: Int, _ page: [ChunkID]) { lock.withLock { slots[i] = page } }
    var all: [[ChunkID]] { lock.withLock { slots } }
}
