import Foundation
import HavenCatalog
import HavenCore
import HavenData
import Logging
import Synchronization
import XenAPI

/// What every runner is given: sessions, the catalog, repositories, the clock, a logger,
/// the event sink, the per-pool limits of the plan. Cancellation is the calling task's.
public struct ExecutionContext: Sendable {
    public let sessions: PoolSessions
    public let catalog: Catalog
    public let state: StateDirectory
    public let instance: String
    public let plan: Plan
    public let now: @Sendable () -> Date
    public let logger: Logger
    let emitEvent: @Sendable (ExecutionEvent) -> Void
    let repositories = RepositoryCache()
    let limits: [String: PoolLimiters]
    /// The appliances of the AppliancePools, leased one per concurrent transfer: the engine's
    /// (shared by the plans it runs at once, so two never take the same address), else the plan's own.
    public let appliances: ApplianceLeases

    init(sessions: PoolSessions, catalog: Catalog, state: StateDirectory, instance: String, plan: Plan, now: @escaping @Sendable () -> Date,
         logger: Logger, emit: @escaping @Sendable (ExecutionEvent) -> Void, limiters: [String: PoolLimiters] = [:], appliances: ApplianceLeases? = nil) {
        self.sessions = sessions
        self.catalog = catalog
        self.state = state
        self.instance = instance
        self.plan = plan
        self.now = now
        self.logger = logger
        emitEvent = emit
        // The engine's limiters when it has them (shared by concurrent plans), else the plan's own.
        var limits: [String: PoolLimiters] = [:]
        for (name, p) in plan.pools {
            limits[name] = limiters[name] ?? PoolLimiters(snapshots: AsyncLimiter(p.snapshots), transfers: AsyncLimiter(p.transfers))
        }
        self.limits = limits
        var l = logger
        l[metadataKey: "component"] = "appliances"
        let applianceLogger = l
        self.appliances = appliances ?? ApplianceLeases(settings: plan.appliancePools, sessions: sessions, catalog: catalog, state: state, instance: instance,
                                                        now: now, log: { applianceLogger.info("\($0)") })
    }

    func emit(_ e: ExecutionEvent) { emitEvent(e) }

    func log(_ a: PlannedAction?, _ text: String) {
        var l = logger
        if let a {
            l[metadataKey: "pool"] = "\(a.pool)"
            l[metadataKey: "action"] = "\(a.kind.rawValue)"
            if let vm = a.vm { l[metadataKey: "vm"] = "\(vm.name)" }
            if let p = a.policy { l[metadataKey: "policy"] = "\(p)" }
        }
        l.info("\(text)")
        emit(.log(a, text))
    }

    func client(_ pool: String) throws -> XenAPIClient {
        guard let c = sessions.client(pool) else { throw EngineError(.connect, pool, "no session to pool \(pool)") }
        return c
    }

    func limiters(_ pool: String) -> PoolLimiters {
        limits[pool] ?? PoolLimiters(snapshots: AsyncLimiter(1), transfers: AsyncLimiter(1))
    }

    func settings(_ pool: String) -> PoolSettings {
        plan.pools[pool] ?? PoolSettings(snapshots: 1, transfers: 1, nbdConnections: 4, nbdRequired: false, nbdNetwork: nil, nbdTLS: true)
    }

    /// Opens a repository named by the plan, creating it when missing (it is declared).
    func repository(_ t: RepositoryTarget) throws -> BackupRepository {
        try repositories.get(t.path) {
            if !FileManager.default.fileExists(atPath: URL(fileURLWithPath: t.path).appendingPathComponent("config.json").path) {
                if let k = t.keyFile, !FileManager.default.fileExists(atPath: k) {
                    throw EngineError(.notFound, t.name, "the key file \(k) of Repository \(t.name) does not exist; haven never creates one on its own: run `haven repo init --encrypt --key-file \(k) \(t.path)`")
                }
                try FileManager.default.createDirectory(atPath: t.path, withIntermediateDirectories: true)
                return try BackupRepository.initialize(at: t.path, chunkSize: t.chunkSize, compression: t.compression, keyFile: t.keyFile)
            }
            return try BackupRepository.open(at: t.path, keyFile: t.keyFile)
        }
    }
}

struct PoolLimiters: Sendable {
    let snapshots: AsyncLimiter
    let transfers: AsyncLimiter
}

/// Carries out a plan: the scheduler orders the actions, one small runner per action kind does
/// each; every result is recorded in the catalog as it happens (what succeeded stays recorded
/// when something else fails).
public struct Executor: Sendable {
    let context: ExecutionContext

    public func apply() async -> ExecutionResult {
        let ctx = context
        return await Scheduler(plan: ctx.plan, emit: ctx.emitEvent) { a in try await Self.perform(a, ctx) }.run()
    }

    static func perform(_ a: PlannedAction, _ ctx: ExecutionContext) async throws -> ActionOutcome {
        try Task.checkCancellation()
        switch a.action {
        case .enableCBT(let change): return try await CBTRunner.enable(a, change, ctx)
        case .disableCBT(let change): return try await CBTRunner.disable(a, change, ctx)
        case .backup(let job): return try await BackupRun(ctx: ctx, action: a, job: job, client: try ctx.client(a.pool)).run()
        case .replicate(let job):
            return try await ReplicateRun(ctx: ctx, action: a, job: job, source: try ctx.client(a.pool), target: try ctx.client(job.targetPool)).run()
        case .failback(let job):
            return try await FailbackRun(ctx: ctx, action: a, job: job, source: try ctx.client(a.pool), target: try ctx.client(job.targetPool)).run()
        case .removeReplica(let r): return try await RemoveReplicaRun(ctx: ctx, action: a, job: r, client: try ctx.client(a.pool)).run()
        case .deleteSnapshot(let r): return try await RemovalRunner.snapshot(a, r, ctx)
        case .retireAnchor(let r): return try await RemovalRunner.anchor(a, r, ctx)
        case .purgeSnapshotData(let r): return try await RemovalRunner.purge(a, r, ctx)
        case .prune(let p): return try await RepositoryRunner.prune(a, p, ctx)
        case .gc(let g): return try await RepositoryRunner.gc(a, g, ctx)
        case .provisionAppliance(let job): return try await ApplianceRunner.provision(a, job, ctx)
        case .startAppliance(let t): return try await ApplianceRunner.start(a, t, ctx)
        case .removeAppliance(let t): return try await ApplianceRunner.remove(a, t, ctx)
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

/// Blocking work that stops when the calling task is cancelled: `body` is given a question to
/// ask between its steps (between chunks, for a disk transfer), which says yes from the moment of
/// the cancellation. A transfer stopped that way throws `CancellationError`, as every other
/// cancelled step does, so the clean-up (no half version, no orphan snapshot) is the same.
func stoppableBlocking<T: Sendable>(_ body: @escaping @Sendable (_ isStopped: @escaping @Sendable () -> Bool) throws -> T) async throws -> T {
    let flag = StopFlag()
    do {
        return try await withTaskCancellationHandler {
            try await blocking { try body { flag.isSet } }
        } onCancel: {
            flag.set()
        }
    } catch {
        if flag.isSet { throw CancellationError() }
        throw error
    }
}

/// Set once, read from any thread.
final class StopFlag: Sendable {
    private let value = Mutex(false)
    var isSet: Bool { value.withLock { $0 } }
    func set() { value.withLock { $0 = true } }
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

final class RepositoryCache: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var open: [String: BackupRepository] = [:]
    func get(_ path: String, _ make: () throws -> BackupRepository) throws -> BackupRepository {
        try lock.withLock {
            if let r = open[path] { return r }
            let r = try make()
            open[path] = r
            return r
        }
    }
}

/// Looks an object up by uuid; nil only when xapi says it does not exist (UUID_INVALID /
/// HANDLE_INVALID). Any other error (a timeout, a lost session) is an error: it never means "gone".
func lookup<T: Sendable>(_ body: () async throws -> T) async throws -> T? {
    do {
        return try await body()
    } catch let e as XenAPIError where e.code == XenAPIError.Code.uuidInvalid || e.code == XenAPIError.Code.handleInvalid {
        return nil
    }
}
