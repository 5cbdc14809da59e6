import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Where a chunk is, as the index keeps it: a pack by number (see `ChunkIndex.packPath`), the
/// offset of the encoded chunk, its length.
struct IndexEntry: Sendable {
    var pack: UInt32
    var length: UInt32
    var offset: UInt64
    var pending: Bool
}

/// Every chunk's location. Most of it lives on disk in sorted runs (`ChunkRun`), mapped and
/// searched in place; only the chunks of packs no run covers yet (the newest) and of packs this
/// process is writing are held in memory. Opening reads the directory `index/`, the runs' small
/// tables and the `.idx` files of the packs no run covers; once those hold `flushEntries` chunks
/// they are written as a new run, and runs of about the same size are merged (size-tiered), so
/// that there are few runs to search and each chunk is rewritten a few times at most.
///
/// The per-pack `.idx` files stay the truth: a run is only a cache of them, made by whichever
/// process opens the repository. Runs are written whole (temporary file, fsync, rename), never
/// changed, and only ever describe packs that existed when they were made; a pack GC removed later
/// is simply absent (its entries are skipped). Two processes merging at once make duplicate runs,
/// which is harmless: each pack is read from one run only (the first that names it).
final class ChunkIndex: @unchecked Sendable {
    // @unchecked: mutable state is guarded by `lock`; runs are immutable once mapped.
    private let lock = NSLock()
    let packsDir: String
    let indexDir: String
    let runsDir: String
    let tmpDir: String

    /// Chunks of packs this process writes (pending), and of sealed packs no run covers.
    private var memory: [ChunkID: IndexEntry] = [:]
    /// A mapped run, its pack numbers, and which of its packs it serves (a pack named by two
    /// runs is served by one).
    struct Run {
        var run: ChunkRun
        var packs: [UInt32]
        var owns: [Bool]
    }
    private var runs: [Run] = []
    /// Packs by number: name, where it is, and a descriptor kept open for reading.
    private var names: [String] = []
    private var numbers: [String: UInt32] = [:]
    private var states: [PackState] = []
    private var readers: [UInt32: Int32] = [:]
    /// Chunks per pack number for sealed packs (the run's or the `.idx`'s count).
    private var sizes: [UInt32: Int] = [:]
    private var lookups = 0

    enum PackState: UInt8 { case writing, placed, sealed, gone }

    /// Loose chunks (of packs no run covers) at which they are written as a run (set before
    /// `load`; tests make it small).
    var flushEntries: Int {
        get { lock.withLock { flushAt } }
        set { lock.withLock { flushAt = newValue } }
    }
    private var flushAt = 32_768
    /// Runs merged at once when this many are of about the same size.
    static let mergeFanIn = 4
    /// Lookups between two drops of the run pages this process has touched.
    static let dropEvery = 4_096

    init(root: URL) {
        packsDir = root.appendingPathComponent("packs").path
        indexDir = root.appendingPathComponent("index").path
        runsDir = root.appendingPathComponent("index/runs").path
        tmpDir = root.appendingPathComponent("tmp").path
    }

    deinit { for (_, fd) in readers { close(fd) } }

    // MARK: packs

    /// The number of pack `name`, registered (writing) when new.
    func registerPack(_ name: String, state: PackState = .writing) -> UInt32 {
        lock.withLock { numberLocked(name, state: state) }
    }

    private func numberLocked(_ name: String, state: PackState) -> UInt32 {
        if let n = numbers[name] {
            if states[Int(n)] == .gone || state == .sealed { states[Int(n)] = state }
            return n
        }
        let n = UInt32(names.count)
        names.append(name)
        numbers[name] = n
        states.append(state)
        return n
    }

    func packPath(_ n: UInt32) -> String {
        lock.withLock { pathLocked(n) }
    }

    private func pathLocked(_ n: UInt32) -> String {
        let name = names[Int(n)]
        return states[Int(n)] == .writing ? tmpDir + "/pack-" + name : packsDir + "/" + name.prefix(2) + "/" + name
    }

    /// A descriptor for reading pack `n`, opened once and kept (a rename does not disturb it).
    func readDescriptor(_ n: UInt32) -> Int32? {
        lock.withLock {
            if let fd = readers[n] {
                // A pack deleted meanwhile (by hand, or a GC elsewhere) still reads through an
                // open descriptor: it must read as missing.
                var st = stat()
                if fstat(fd, &st) == 0 && st.st_nlink > 0 { return fd }
                close(fd)
                readers[n] = nil
            }
            // Too many open: start again (restores touch packs roughly in order).
            if readers.count >= 256 {
                for (_, fd) in readers { close(fd) }
                readers.removeAll()
            }
            var fd = open(pathLocked(n), O_RDONLY | O_CLOEXEC)
            // Renamed into packs/ since the path was chosen: once more.
            if fd < 0 && errno == ENOENT { fd = open(pathLocked(n), O_RDONLY | O_CLOEXEC) }
            guard fd >= 0 else { return nil }
            readers[n] = fd
            return fd
        }
    }

    /// Pack `n` was renamed into `packs/` (its index is not written yet).
    func packMoved(_ n: UInt32) { lock.withLock { states[Int(n)] = .placed } }

    /// Pack `n` and its index are in place and durable: its chunks are sealed.
    func sealPack(_ n: UInt32, entries: [(ChunkID, UInt64, UInt32)]) {
        lock.withLock {
            states[Int(n)] = .sealed
            sizes[n] = entries.count
            for (id, offset, length) in entries { memory[id] = IndexEntry(pack: n, length: length, offset: offset, pending: false) }
        }
    }

    /// Pack `n` is gone (GC removed it, or a write to it failed for good).
    func removePack(_ n: UInt32) {
        lock.withLock {
            states[Int(n)] = .gone
            sizes[n] = nil
            if let fd = readers.removeValue(forKey: n) { close(fd) }
            memory = memory.filter { $0.value.pack != n }
        }
    }

    func removePack(named name: String) {
        guard let n = lock.withLock({ numbers[name] }) else { return }
        removePack(n)
    }

    // MARK: chunks

    func addPending(_ id: ChunkID, pack: UInt32, offset: UInt64, length: UInt32) {
        lock.withLock { memory[id] = IndexEntry(pack: pack, length: length, offset: offset, pending: true) }
    }

    func dropPending(_ id: ChunkID) {
        lock.withLock { if memory[id]?.pending == true { memory[id] = nil } }
    }

    func find(_ id: ChunkID) -> IndexEntry? {
        let (hit, runs, drop) = lock.withLock { () -> (IndexEntry?, [Run], Bool) in
            if let e = memory[id], states[Int(e.pack)] != .gone { return (e, [], false) }
            lookups += 1
            return (nil, self.runs, lookups % Self.dropEvery == 0)
        }
        if let hit { return hit }
        if drop { for r in runs { r.run.dropResidentRecords() } }
        for r in runs {
            guard let (offset, length, local) = r.run.lookup(id), r.owns[local] else { continue }
            let n = r.packs[local]
            if lock.withLock({ states[Int(n)] == .sealed }) { return IndexEntry(pack: n, length: length, offset: offset, pending: false) }
        }
        return nil
    }

    /// Chunks indexed in sealed packs that are there, and pending ones.
    var count: Int {
        lock.withLock { memory.values.filter { $0.pending && states[Int($0.pack)] != .gone }.count + sizes.values.reduce(0, +) }
    }

    /// The first non-zero id (with the reason) that is not in a sealed pack whose file exists;
    /// nil when all are. `packs` caches, by pack number, whether its file exists. A page of ids
    /// costs two lock acquisitions, not two per id (a commit checks every id of every disk).
    func firstUnsealed(_ ids: [ChunkID], packs cache: inout [UInt32: Bool]) -> (ChunkID, String)? {
        var found = [IndexEntry?](repeating: nil, count: ids.count)
        let runs = lock.withLock { () -> [Run] in
            for (i, id) in ids.enumerated() where !id.isZero {
                if let e = memory[id], states[Int(e.pack)] != .gone { found[i] = e }
            }
            return self.runs
        }
        var fromRuns: [(Int, UInt32)] = []
        for (i, id) in ids.enumerated() where !id.isZero && found[i] == nil {
            for r in runs {
                guard let (offset, length, local) = r.run.lookup(id), r.owns[local] else { continue }
                found[i] = IndexEntry(pack: r.packs[local], length: length, offset: offset, pending: false)
                fromRuns.append((i, r.packs[local]))
                break
            }
        }
        var paths: [UInt32: String] = [:]
        lock.withLock {
            for (i, n) in fromRuns where states[Int(n)] != .sealed { found[i] = nil }
            for e in found.compactMap({ $0 }) where cache[e.pack] == nil && paths[e.pack] == nil { paths[e.pack] = pathLocked(e.pack) }
        }
        for (n, path) in paths { cache[n] = access(path, F_OK) == 0 }
        for (i, id) in ids.enumerated() where !id.isZero {
            guard let e = found[i] else { return (id, "is in no pack index") }
            if e.pending { return (id, "is still in a pack being written (\(packPath(e.pack)))") }
            guard cache[e.pack] == true else { return (id, "is in pack \(packPath(e.pack)), which is gone") }
        }
        return nil
    }

    // MARK: opening

    /// Reads the index: the runs, and the `.idx` of every pack no run covers. Pending chunks of
    /// this process stay. Writes runs of the loose packs when there are many, and merges runs.
    func load() throws {
        let present = Set(Self.listing(indexDir).filter { $0.hasSuffix(".idx") }.map { String($0.dropLast(4)) })
        try? BackupRepository.makeDirectory(runsDir)
        var mapped: [ChunkRun] = []
        for file in Self.listing(runsDir) where file.hasSuffix(".run") {
            do { mapped.append(try ChunkRun(path: runsDir + "/" + file)) } catch {
                // A damaged run is only a cache: its packs are read from their .idx files.
                unlink(runsDir + "/" + file)
            }
        }
        // Largest first: a pack named by two runs (a merge raced another) is read from the bigger.
        mapped.sort { $0.count > $1.count }
        var covered = Set<String>()
        var table: [Run] = []
        lock.withLock {
            for (n, name) in names.enumerated() where states[n] == .sealed && !present.contains(name) {
                states[n] = .gone
                if let fd = readers.removeValue(forKey: UInt32(n)) { close(fd) }
            }
            for run in mapped {
                var packs: [UInt32] = []
                var owns: [Bool] = []
                for name in run.packNames {
                    let mine = present.contains(name) && covered.insert(name).inserted
                    packs.append(numberLocked(name, state: present.contains(name) ? .sealed : .gone))
                    owns.append(mine)
                }
                table.append(Run(run: run, packs: packs, owns: owns))
            }
        }
        // Packs no run covers: in batches, each written as a run once big enough; the rest (the
        // newest few) held in memory.
        var batch: [(name: String, entries: [(ChunkID, UInt64, UInt32)])] = []
        var batchEntries = 0
        var flushed = false
        // When many packs are loose (a repository of an earlier version), runs are written every
        // this many chunks read: memory stays at about that many entries.
        let flushLimit = flushEntries
        let batchAt = flushLimit * 8
        for name in present.subtracting(covered).sorted() {
            guard let data = FileManager.default.contents(atPath: indexDir + "/" + name + ".idx") else { continue }
            let entries = Self.parseIdx(data)
            batch.append((name, entries))
            batchEntries += entries.count
            if batchEntries >= batchAt, let run = try? writeRun(batch) {
                table.append(run)
                batch = []
                batchEntries = 0
                flushed = true
            }
        }
        if batchEntries >= flushLimit, let run = try? writeRun(batch) {
            table.append(run)
            batch = []
            flushed = true
        }
        lock.withLock {
            memory = memory.filter { $0.value.pending && states[Int($0.value.pack)] != .gone }
            var sizes: [UInt32: Int] = [:]
            for t in table {
                for (i, n) in t.packs.enumerated() where t.owns[i] { sizes[n] = t.run.packCounts[i] }
            }
            for (name, entries) in batch {
                let n = numberLocked(name, state: .sealed)
                sizes[n] = entries.count
                for (id, offset, length) in entries where memory[id] == nil {
                    memory[id] = IndexEntry(pack: n, length: length, offset: offset, pending: false)
                }
            }
            // Packs this process sealed keep their count.
            for (n, c) in self.sizes where states[Int(n)] == .sealed && sizes[n] == nil { sizes[n] = c }
            self.sizes = sizes
            runs = table
        }
        if flushed || table.count >= Self.mergeFanIn { try? mergeTiers() }
    }

    /// A run of the chunks of these packs.
    private func writeRun(_ packs: [(name: String, entries: [(ChunkID, UInt64, UInt32)])]) throws -> Run {
        var records: [(id: ChunkID, offset: UInt64, length: UInt32, pack: UInt32)] = []
        records.reserveCapacity(packs.reduce(0) { $0 + $1.entries.count })
        for (p, pack) in packs.enumerated() {
            for (id, offset, length) in pack.entries { records.append((id, offset, length, UInt32(p))) }
        }
        records.sort { $0.id < $1.id }
        let writer = try RunWriter(dir: runsDir, tmp: tmpDir, packs: packs.map { ($0.name, $0.entries.count) })
        for r in records { try writer.add(r.id, offset: r.offset, length: r.length, pack: r.pack) }
        let run = try ChunkRun(path: try writer.finish())
        let numbers = lock.withLock { run.packNames.map { numberLocked($0, state: .sealed) } }
        return Run(run: run, packs: numbers, owns: [Bool](repeating: true, count: numbers.count))
    }

    /// Size-tiered merging: while `mergeFanIn` runs share a tier (their size's power of four,
    /// counted in `flushEntries`), they become one (chunks of packs gone are dropped).
    private func mergeTiers() throws {
        while true {
            let current = lock.withLock { runs }
            var tiers: [Int: [Int]] = [:]
            for (i, r) in current.enumerated() {
                var tier = 0
                var n = max(1, r.run.count / max(1, flushEntries))
                while n >= 4 {
                    n /= 4
                    tier += 1
                }
                tiers[tier, default: []].append(i)
            }
            guard let group = tiers.sorted(by: { $0.key < $1.key }).first(where: { $0.value.count >= Self.mergeFanIn })?.value else { return }
            try merge(group.map { current[$0] })
        }
    }

    /// Streams the parts, in id order, into one new run; then the parts go.
    private func merge(_ parts: [Run]) throws {
        // The new run's pack table: the parts' packs that are still there, each once.
        var packs: [(name: String, count: Int)] = []
        var local: [UInt32: UInt32] = [:]
        let live = lock.withLock { parts.map { p in p.packs.enumerated().map { i, n in p.owns[i] && states[Int(n)] == .sealed } } }
        for (k, p) in parts.enumerated() {
            for (i, n) in p.packs.enumerated() where live[k][i] && local[n] == nil {
                local[n] = UInt32(packs.count)
                packs.append((p.run.packNames[i], p.run.packCounts[i]))
            }
        }
        let writer = try RunWriter(dir: runsDir, tmp: tmpDir, packs: packs)
        var cursors = [Int](repeating: 0, count: parts.count)
        var heads: [ChunkID?] = parts.map { $0.run.count > 0 ? $0.run.record(0).id : nil }
        var merged = 0
        while true {
            var best = -1
            for k in heads.indices {
                guard let id = heads[k] else { continue }
                if best < 0 || id < heads[best]! { best = k }
            }
            guard best >= 0 else { break }
            let r = parts[best].run.record(cursors[best])
            if live[best][r.pack], let n = local[parts[best].packs[r.pack]] {
                try writer.add(r.id, offset: r.offset, length: r.length, pack: n)
            }
            cursors[best] += 1
            heads[best] = cursors[best] < parts[best].run.count ? parts[best].run.record(cursors[best]).id : nil
            merged += 1
            // Reading every record of the parts must not keep them all resident.
            if merged % 262_144 == 0 { for p in parts { p.run.dropResidentRecords() } }
        }
        let run = try ChunkRun(path: try writer.finish())
        for p in parts { p.run.dropResidentRecords() }
        lock.withLock {
            let gone = Set(parts.map { ObjectIdentifier($0.run) })
            runs.removeAll { gone.contains(ObjectIdentifier($0.run)) }
            let numbers = run.packNames.map { numberLocked($0, state: .sealed) }
            runs.append(Run(run: run, packs: numbers, owns: [Bool](repeating: true, count: numbers.count)))
        }
        for p in parts { unlink(p.run.path) }
    }

    static func parseIdx(_ data: Data) -> [(ChunkID, UInt64, UInt32)] {
        data.withUnsafeBytes { raw in
            var out: [(ChunkID, UInt64, UInt32)] = []
            out.reserveCapacity(raw.count / 44)
            var i = 0
            while i + 44 <= raw.count {
                out.append((ChunkID(raw: UnsafeRawBufferPointer(rebasing: raw[i..<(i + 32)])),
                            UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: i + 32, as: UInt64.self)),
                            UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i + 40, as: UInt32.self))))
                i += 44
            }
            return out
        }
    }

    /// Names in a directory (readdir: no URL per entry).
    static func listing(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var out: [String] = []
        while let e = readdir(dir) {
            let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { out.append(name) }
        }
        return out
    }

    /// Reads every index again when a sealed pack this process knows has lost its index (a GC by
    /// another process deleted or rewrote it): otherwise deduplication would rely on chunks gone.
    func reloadIfPacksVanished() throws {
        let present = Set(Self.listing(indexDir).filter { $0.hasSuffix(".idx") }.map { String($0.dropLast(4)) })
        let vanished = lock.withLock { names.indices.contains { states[$0] == .sealed && !present.contains(names[$0]) } }
        if vanished { try load() }
    }

    /// Opens the index again when this process's own sealed chunks, held in memory, have grown
    /// past `flushEntries` (a long-running daemon): they go into a run.
    func compactIfLarge() throws {
        let large = lock.withLock { memory.count >= flushAt && memory.values.lazy.filter({ !$0.pending }).count >= flushAt }
        if large { try load() }
    }

    /// Every sealed pack that is there, with its path and its chunks (from its `.idx`): for GC.
    func packEntries() -> [(name: String, path: String, entries: [(ChunkID, UInt64, UInt32)])] {
        let packs = lock.withLock { names.indices.filter { states[$0] == .sealed }.map { (names[$0], pathLocked(UInt32($0))) } }
        return packs.compactMap { name, path in
            guard let data = FileManager.default.contents(atPath: indexDir + "/" + name + ".idx") else { return nil }
            return (name, path, Self.parseIdx(data))
        }
    }
}
