import Foundation
import Synchronization
import XenAPI

/// One object of the simulated pool: its class, its wire record, and when it changed.
struct SimObject: Codable {
    var cls: String
    var fields: [String: XenValue]
    var created: Int64
    var modified: Int64
}

/// A deleted object, remembered so event.from can report `del`.
struct Tombstone: Codable {
    var cls: String
    var ref: String
    var created: Int64
    var deleted: Int64
}

/// Per-VDI changed-block tracking as SM keeps it: the blocks changed since the last snapshot of
/// the chain (on a live VDI) or between the previous snapshot and this one (on a snapshot).
struct CBTLog: Codable {
    /// All VDIs of one chain share it; enabling CBT anew starts a new chain.
    var chain: String
    /// MSB-first, one bit per 64 KiB block.
    var bitmap: [UInt8]
    /// The previous snapshot VDI of the chain (for a live VDI: its newest snapshot).
    var previous: String?
}

/// A logged-in session.
struct SimSession: Codable {
    var ref: String
    var user: String
    var originator: String
    var created: Date
    var lastActive: Date
}

/// Everything the simulator persists: objects, tombstones, CBT logs, sessions.
struct DatabaseSnapshot: Codable {
    var generation: Int64
    var objects: [String: SimObject]
    var tombstones: [Tombstone]
    var cbt: [String: CBTLog]
    var sessions: [String: SimSession]
}

/// The simulated pool's database. Every access holds `lock` (an NSCondition, so event.from can
/// wait for changes); mutations bump `generation` and wake waiters.
final class Database: @unchecked Sendable {
    // @unchecked: all mutable state below is read and written only while `lock` is held.
    let lock = NSCondition()
    var generation: Int64 = 0
    var objects: [String: SimObject] = [:]
    var byClass: [String: Set<String>] = [:]
    var tombstones: [Tombstone] = []
    var cbt: [String: CBTLog] = [:]
    var sessions: [String: SimSession] = [:]
    private(set) var dirty = false
    /// uuid → ref, a hint checked on every use (a stale entry falls back to a scan): lookups by
    /// uuid are per call, and a scan per call made a large pool's reconcile quadratic.
    private var uuidIndex: [String: String] = [:]

    init() {}

    init(snapshot: DatabaseSnapshot) {
        generation = snapshot.generation
        objects = snapshot.objects
        tombstones = snapshot.tombstones
        cbt = snapshot.cbt
        sessions = snapshot.sessions
        for (ref, o) in objects {
            byClass[o.cls, default: []].insert(ref)
            if let u = o.fields["uuid"]?.stringValue { uuidIndex[u] = ref }
        }
    }

    /// The thread inside `withLock` now (0: none). Only for tests that check slow work, such as
    /// encoding the state, runs outside the lock; a body waiting in `lock.wait` blurs it.
    private let holder = Atomic<UInt>(0)
    var heldByThisThread: Bool { holder.load(ordering: .relaxed) == UInt(pthread_self()) }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        holder.store(UInt(pthread_self()), ordering: .relaxed)
        defer {
            holder.store(0, ordering: .relaxed)
            lock.unlock()
        }
        return try body()
    }

    static func newRef() -> String { "OpaqueRef:" + UUID().uuidString.lowercased() }
    static func newUUID() -> String { UUID().uuidString.lowercased() }

    private func touch() {
        generation += 1
        dirty = true
        lock.broadcast()
    }

    // MARK: objects (call with the lock held)

    @discardableResult
    func insert(_ cls: String, _ fields: [String: XenValue], ref: String = Database.newRef()) -> String {
        touch()
        var f = fields
        if f["uuid"] == nil { f["uuid"] = .string(Database.newUUID()) }
        objects[ref] = SimObject(cls: cls, fields: f, created: generation, modified: generation)
        byClass[cls, default: []].insert(ref)
        if let u = f["uuid"]?.stringValue { uuidIndex[u] = ref }
        return ref
    }

    func remove(_ ref: String) {
        guard let o = objects.removeValue(forKey: ref) else { return }
        touch()
        byClass[o.cls]?.remove(ref)
        if let u = o.fields["uuid"]?.stringValue, uuidIndex[u] == ref { uuidIndex[u] = nil }
        tombstones.append(Tombstone(cls: o.cls, ref: ref, created: o.created, deleted: generation))
        if tombstones.count > 20_000 { tombstones.removeFirst(tombstones.count - 10_000) }
    }

    func get(_ ref: String) -> SimObject? { objects[ref] }

    func get(_ ref: String, _ cls: String) -> [String: XenValue]? {
        guard let o = objects[ref], o.cls == cls else { return nil }
        return o.fields
    }

    func field(_ ref: String, _ name: String) -> XenValue? { objects[ref]?.fields[name] }

    func set(_ ref: String, _ name: String, _ value: XenValue) {
        guard objects[ref] != nil else { return }
        if objects[ref]!.fields[name] == value { return }
        touch()
        objects[ref]!.fields[name] = value
        objects[ref]!.modified = generation
    }

    func update(_ ref: String, _ body: (inout [String: XenValue]) -> Void) {
        guard var o = objects[ref] else { return }
        let before = o.fields
        body(&o.fields)
        guard o.fields != before else { return }
        touch()
        o.modified = generation
        objects[ref] = o
    }

    func refs(_ cls: String) -> [String] { (byClass[cls] ?? []).sorted() }

    func find(_ cls: String, where predicate: ([String: XenValue]) -> Bool) -> [String] {
        refs(cls).filter { predicate(objects[$0]!.fields) }
    }

    func byUUID(_ cls: String, _ uuid: String) -> String? {
        if let ref = uuidIndex[uuid], let o = objects[ref], o.cls == cls, o.fields["uuid"]?.stringValue == uuid { return ref }
        let found = (byClass[cls] ?? []).first { objects[$0]?.fields["uuid"]?.stringValue == uuid }
        if let found { uuidIndex[uuid] = found }
        return found
    }

    /// Adds `item` to a set-valued field.
    func addToSet(_ ref: String, _ name: String, _ item: String) {
        update(ref) { f in
            var a = f[name]?.arrayValue ?? []
            if !a.contains(.string(item)) { a.append(.string(item)) }
            f[name] = .array(a)
        }
    }

    func removeFromSet(_ ref: String, _ name: String, _ item: String) {
        update(ref) { f in f[name] = .array((f[name]?.arrayValue ?? []).filter { $0 != .string(item) }) }
    }

    func snapshot() -> DatabaseSnapshot {
        DatabaseSnapshot(generation: generation, objects: objects, tombstones: tombstones, cbt: cbt, sessions: sessions)
    }

    func markClean() { dirty = false }
    func markDirty() {
        dirty = true
    }
}
