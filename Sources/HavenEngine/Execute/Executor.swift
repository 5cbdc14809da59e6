import Foundation
import HavenCatalog
import HavenCore
import HavenData
import HavenSpec
import XenAPI

/// Carries out a plan: per-pool concurrency limits, retries on transient xapi errors, progress
/// events, and every result recorded in the catalog as it happens (what succeeded stays recorded
/// when something else fails).
public final class Executor: Sendable {
    let desired: DesiredState
    let catalog: Catalog
    let state: StateDirectory
    let instance: String
    let clients: [String: XenAPIClient]
    let observed: [String: ObservedPool]
    let now: @Sendable () -> Date
    let emit: @Sendable (ExecutionEvent) -> Void
    let repositories = RepositoryCache()

    public init(desired: DesiredState, catalog: Catalog, state: StateDirectory, instance: String, clients: [String: XenAPIClient],
                observed: [String: ObservedPool], now: @escaping @Sendable () -> Date, emit: @escaping @Sendable (ExecutionEvent) -> Void) {
        self.desired = desired
        self.catalog = catalog
        self.state = state
        self.instance = instance
        self.clients = clients
        self.observed = observed
        self.now = now
        self.emit = emit
    }

    public func apply(_ plan: Plan) async -> ExecutionResult {
        let results = ResultBox()
        let actions = plan.actions.filter { $0.kind != .warning }
        // Per VM: CBT, then the backup, then what the backup replaces (only if it succeeded).
        var perVM: [String: [PlanAction]] = [:]
        var order: [String] = []
        var later: [PlanAction] = []
        let backupKeys = Set(actions.filter { $0.kind == .backup }.map { "\($0.pool)\u{0}\($0.vmUUID ?? "")\u{0}\($0.policy ?? "")" })
        for a in actions {
            let key = "\(a.pool)\u{0}\(a.vmUUID ?? "")\u{0}\(a.policy ?? "")"
            let tied = a.kind == .enableCBT || a.kind == .backup || (a.kind == .deleteSnapshot && backupKeys.contains(key) && a.objectClass == "VDI")
            if tied {
                if perVM[key] == nil { order.append(key) }
                perVM[key, default: []].append(a)
            } else {
                later.append(a)
            }
        }
        var limits: [String: (snapshots: AsyncLimiter, transfers: AsyncLimiter)] = [:]
        for p in desired.pools {
            limits[p.name] = (AsyncLimiter(p.spec.limits.snapshots), AsyncLimiter(p.spec.limits.transfers))
        }
        let frozenLimits = limits
        await withTaskGroup(of: Void.self) { group in
            for key in order {
                let list = perVM[key]!
                group.addTask {
                    var backupOK = true
                    for a in list {
                        if a.kind == .deleteSnapshot && !backupOK {
                            results.skip(a, "the backup it follows did not succeed")
                            self.emit(.skipped(a, "the backup it follows did not succeed"))
                            continue
                        }
                        let ok = await self.run(a, limits: frozenLimits[a.pool], results: results)
                        if a.kind == .backup { backupOK = ok }
                    }
                }
            }
        }
        // Retention counted the new backups; where one failed, its VM keeps every version.
        let failedBackups = Set(results.result.failed.filter { $0.0.kind == .backup }.map { "\($0.0.pool)\u{0}\($0.0.vmUUID ?? "")\u{0}\($0.0.policy ?? "")" })
        for a in later.sorted(by: { Self.rank($0.kind) < Self.rank($1.kind) }) {
            let key = "\(a.pool)\u{0}\(a.vmUUID ?? "")\u{0}\(a.policy ?? "")"
            if a.kind == .prune && failedBackups.contains(key) {
                results.skip(a, "the VM's backup in this run failed; its versions are all kept")
                emit(.skipped(a, "the VM's backup in this run failed; its versions are all kept"))
                continue
            }
            _ = await run(a, limits: limits[a.pool], results: results)
        }
        return results.result
    }

    static func rank(_ k: PlanAction.Kind) -> Int {
        switch k {
        case .prune: 0
        case .gc: 1
        case .deleteSnapshot: 2
        case .disableCBT: 3
        default: 4
        }
    }

    /// Runs one action; reports and records its outcome. Returns whether it succeeded.
    func run(_ a: PlanAction, limits: (snapshots: AsyncLimiter, transfers: AsyncLimiter)?, results: ResultBox) async -> Bool {
        emit(.started(a))
        do {
            let summary = try await perform(a, limits: limits ?? (AsyncLimiter(1), AsyncLimiter(1)))
            results.succeed(a)
            emit(.finished(a, summary))
            return true
        } catch {
            let text = "\(error)"
            results.fail(a, text)
            emit(.failed(a, text))
            return false
        }
    }

    func client(_ pool: String) throws -> XenAPIClient {
        guard let c = clients[pool] else { throw EngineError(.connect, pool, "no session to pool \(pool)") }
        return c
    }

    func perform(_ a: PlanAction, limits: (snapshots: AsyncLimiter, transfers: AsyncLimiter)) async throws -> String {
        let c = try client(a.pool)
        switch a.kind {
        case .enableCBT:
            let d = a.disks[0]
            let vdi = try await c.vdi(uuid: d.vdiUUID)
            try await withRetry(on: { self.emit(.log(a, $0)) }) { try await c.enableCBT(vdi) }
            try await c.setOtherConfig(vdi, key: OwnershipMarks.cbt, value: instance)
            try catalog.markCBT(CBTMark(pool: a.pool, vdiUUID: d.vdiUUID, policy: a.policy ?? ""))
            return "CBT enabled on \(d.name)"
        case .disableCBT:
            let vdi = try await c.vdi(uuid: a.objectUUID ?? "")
            let record = try await c.record(vdi)
            guard record.otherConfig[OwnershipMarks.cbt] == instance else {
                throw EngineError(.action, a.target, "CBT on \(a.target) was not enabled by this haven; left alone")
            }
            try await withRetry(on: { self.emit(.log(a, $0)) }) { try await c.disableCBT(vdi) }
            try await c.call(.vdiRemoveFromOtherConfig, [vdi.value, .string(OwnershipMarks.cbt)])
            try catalog.unmarkCBT(pool: a.pool, vdiUUID: a.objectUUID ?? "")
            return "CBT disabled on \(a.target)"
        case .backup:
            return try await BackupRun(executor: self, action: a, client: c, limits: limits).run()
        case .deleteSnapshot:
            return try await deleteOwned(a, client: c)
        case .prune:
            let repo = try repository(a.repository ?? "")
            do {
                try repo.prune(a.target)
            } catch let e as DataError where e.code == .noSuchVersion {
                emit(.log(a, "version \(a.target) was already gone from the repository"))
            }
            try catalog.forget(backup: a.target)
            return "pruned \(a.target)"
        case .gc:
            let repo = try repository(a.target)
            let r = try await blocking { try repo.collectGarbage(safetyWindow: 3_600, lockTimeout: 600) }
            return "\(r.deletedChunks) chunks deleted, \(r.keptYoungChunks) young ones kept"
        case .warning:
            return ""
        }
    }

    /// Destroys a snapshot VM (with its disks) or an anchor VDI, after checking it is haven's: in
    /// the inventory and carrying this instance's mark on the pool.
    func deleteOwned(_ a: PlanAction, client c: XenAPIClient) async throws -> String {
        guard let uuid = a.objectUUID, let cls = a.objectClass else { throw EngineError(.action, a.target, "no object to delete") }
        let inventory = try catalog.view().inventory
        guard inventory.contains(where: { $0.pool == a.pool && $0.uuid == uuid }) else {
            throw EngineError(.action, uuid, "\(uuid) is not in haven's inventory; left alone")
        }
        if cls == "VM" {
            guard let vm = try? await c.vm(uuid: uuid) else {
                try catalog.disown(pool: a.pool, uuid: uuid)
                return "snapshot \(uuid) was already gone"
            }
            let record = try await c.record(vm)
            guard record.otherConfig[OwnershipMarks.owner] == instance, record.isASnapshot else {
                throw EngineError(.action, uuid, "\(record.nameLabel) does not carry haven's mark; left alone")
            }
            var vdis: [VDIRef] = []
            for vbd in record.vbds {
                if let r = try? await c.record(vbd), !r.vdi.isNull, r.type == "Disk" { vdis.append(r.vdi) }
            }
            try await withRetry(on: { self.emit(.log(a, $0)) }) { try await c.destroy(vm) }
            try catalog.disown(pool: a.pool, uuid: uuid)
            for vdi in vdis {
                let r = try await c.record(vdi)
                guard r.otherConfig[OwnershipMarks.owner] == instance else { continue }
                // A snapshot disk that serves as a CBT anchor stays (as CBT metadata) until replaced.
                if try catalog.view().anchors.contains(where: { $0.snapshotVDI == r.uuid }) { continue }
                try await withRetry(on: { self.emit(.log(a, $0)) }) { try await c.destroy(vdi) }
                try catalog.disown(pool: a.pool, uuid: r.uuid)
            }
            return "deleted snapshot \(record.nameLabel)"
        }
        guard let vdi = try? await c.vdi(uuid: uuid) else {
            try catalog.disown(pool: a.pool, uuid: uuid)
            return "\(uuid) was already gone"
        }
        let record = try await c.record(vdi)
        guard record.otherConfig[OwnershipMarks.owner] == instance else {
            throw EngineError(.action, uuid, "VDI \(record.nameLabel) does not carry haven's mark; left alone")
        }
        try await withRetry(on: { self.emit(.log(a, $0)) }) { try await c.destroy(vdi) }
        try catalog.disown(pool: a.pool, uuid: uuid)
        try catalog.removeAnchor(pool: a.pool, snapshotVDI: uuid)
        return "deleted \(a.target)"
    }

    /// Opens (creating it when missing: it is declared) a Repository resource.
    func repository(_ name: String) throws -> BackupRepository {
        try repositories.get(name) {
            guard let r = desired.repository(named: name) else { throw EngineError(.notFound, name, "no Repository \(name) is declared") }
            let path = r.spec.path
            if !FileManager.default.fileExists(atPath: URL(fileURLWithPath: path).appendingPathComponent("config.json").path) {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
                return try BackupRepository.initialize(at: path, chunkSize: Int(r.spec.chunkSize.bytes), compression: r.spec.compression.description,
                                                       keyFile: r.spec.encryption?.keyFile)
            }
            return try BackupRepository.open(at: path, keyFile: r.spec.encryption?.keyFile)
        }
    }
}

/// Runs blocking work (disk I/O, hashing) on a thread of its own.
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { cont in
        let t = Thread { cont.resume(with: Result { try body() }) }
        t.stackSize = 1 << 20
        t.start()
    }
}

/// At most N holders at once (per-pool snapshot and transfer limits).
actor AsyncLimiter {
    private var available: Int
    private var waiters: [CheckedContinuation<Void, Never>] = []

    init(_ n: Int) { available = max(1, n) }

    func acquire() async {
        if available > 0 {
            available -= 1
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    func release() {
        if waiters.isEmpty { available += 1 } else { waiters.removeFirst().resume() }
    }

    func with<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        await acquire()
        do {
            let v = try await body()
            release()
            return v
        } catch {
            release()
            throw error
        }
    }
}

final class ResultBox: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var value = ExecutionResult()
    func succeed(_ a: PlanAction) { lock.withLock { value.succeeded.append(a) } }
    func fail(_ a: PlanAction, _ why: String) { lock.withLock { value.failed.append((a, why)) } }
    func skip(_ a: PlanAction, _ why: String) { lock.withLock { value.skipped.append((a, why)) } }
    var result: ExecutionResult { lock.withLock { value } }
}

final class RepositoryCache: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var open: [String: BackupRepository] = [:]
    func get(_ name: String, _ make: () throws -> BackupRepository) throws -> BackupRepository {
        try lock.withLock {
            if let r = open[name] { return r }
            let r = try make()
            open[name] = r
            return r
        }
    }
}
