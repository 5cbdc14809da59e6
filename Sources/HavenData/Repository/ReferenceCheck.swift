import Foundation

#if canImport(Glibc)
    import Glibc
#endif

extension BackupRepository {
    /// Throws `missingChunk`, naming the chunk, unless every index page and chunk the version
    /// names is in a sealed pack whose file is still there: a manifest must never name a chunk
    /// that is gone (issue 13: a "good" backup that cannot be restored). Index pages are read
    /// (which checks them whole); data chunks cost one table lookup each, and one `access` per pack.
    func checkReferences(of manifest: BackupManifest) throws {
        do {
            try checkReferencesOnce(manifest)
        } catch let e as DataError where e.code == .missingChunk {
            // The table may predate a GC by another process that moved live chunks into new
            // packs: read the pack indexes again, once, before calling a chunk missing.
            try index.load()
            try checkReferencesOnce(manifest)
        }
    }

    private func checkReferencesOnce(_ manifest: BackupManifest) throws {
        var packs: [UInt32: Bool] = [:]
        for disk in manifest.disks {
            guard let root = ChunkID(hex: disk.index.root) else { throw DataError(.badManifest, disk.index.root, "bad index root") }
            // Upper pages (a thousandth of the entries at most), then each leaf page's entries as
            // it is read: memory stays at one page, whatever the disk's size.
            var level = [root]
            for _ in 0..<disk.index.depth {
                try index.requireSealed(level, packs: &packs)
                level = try level.flatMap { try DiskIndex.page($0, self) }
            }
            try index.requireSealed(level, packs: &packs)
            var entries = 0
            for leaf in level {
                let ids = try DiskIndex.page(leaf, self)
                try index.requireSealed(ids, packs: &packs)
                entries += ids.count
            }
            guard entries == disk.index.entries else {
                throw DataError(.badManifest, disk.index.root, "index has \(entries) entries, the version says \(disk.index.entries)")
            }
        }
    }
}

extension ChunkIndex {
    /// Throws `missingChunk` for the first non-zero id not in a sealed pack whose file exists.
    /// `packs` remembers, across calls, which pack files exist.
    func requireSealed(_ ids: [ChunkID], packs: inout [UInt32: Bool]) throws {
        if let (id, why) = firstUnsealed(ids, packs: &packs) {
            throw DataError(.missingChunk, id.hex, "the version needs this chunk, but it \(why); nothing was committed")
        }
    }
}
