import Foundation

/// What forgetting versions would let `haven repo gc` free.
public struct ExclusiveUsage: Sendable, Hashable {
    /// Chunks (data and index pages) only the given versions reference.
    public var chunks: Int
    /// Their size as stored (compressed, encrypted), without pack overhead.
    public var bytes: Int64
}

extension BackupRepository {
    /// The chunks only `versions` reference, none of the other versions: an upper bound of what
    /// `gc` frees once they are forgotten (gc keeps chunks younger than its safety window, and a
    /// pack stays until a third of it is dead).
    public func exclusiveUsage(of versions: Set<String>) throws -> ExclusiveUsage {
        var mine = Set<ChunkID>()
        var others = Set<ChunkID>()
        let all = try manifests()
        // Another damaged version may need any chunk: the estimate would be a guess (and gc refuses).
        if let d = all.damaged.first(where: { !versions.contains($0.id) }) { throw d.error }
        for m in all {
            for d in m.disks {
                let (pages, entries) = try DiskIndex.walk(d.index, from: self)
                if versions.contains(m.id) {
                    mine.formUnion(pages)
                    mine.formUnion(entries)
                } else {
                    others.formUnion(pages)
                    others.formUnion(entries)
                }
            }
        }
        var usage = ExclusiveUsage(chunks: 0, bytes: 0)
        for id in mine.subtracting(others) where !id.isZero {
            guard let location = index.find(id) else { continue }
            usage.chunks += 1
            usage.bytes += Int64(location.length)
        }
        return usage
    }
}
