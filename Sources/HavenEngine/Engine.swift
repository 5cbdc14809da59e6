import Foundation
import HavenCatalog
import HavenCore
import HavenSpec
import Logging
import XenAPI

/// One XenAPI session per pool per process. Observing reuses the session transfers use (it never
/// logs in again while one is open); `logoutAll` ends every session, on every path out.
public final class PoolSessions: Sendable {
    public let clients: [String: XenAPIClient]
    /// Pools whose client could not even be made (credentials missing), with why.
    public let unusable: [String: String]

    public init(desired: DesiredState) {
        var clients: [String: XenAPIClient] = [:]
        var unusable: [String: String] = [:]
        for p in desired.pools {
            do { clients[p.name] = try PoolConnection.client(for: p) } catch { unusable[p.name] = "\(error)" }
        }
        self.clients = clients
        self.unusable = unusable
    }

    public func client(_ pool: String) -> XenAPIClient? { clients[pool] }

    public func logoutAll() async {
        await withTaskGroup(of: Void.self) { g in
            for c in clients.values { g.addTask { await c.logout() } }
        }
    }
}

/// What a set of pools looked like: the ones read, and the ones that could not be, with why.
public struct Observation: Sendable {
    public var pools: [String: ObservedPool] = [:]
    public var unreachable: [String: String] = [:]

    public init() {}
}

/// Everything one `diff`, `apply` or reconcile loop needs: the desired state, this installation's
/// state directory and catalog, sessions to the pools. `reconcile` is the one way changes are
/// made: `apply`, `backup now` and the daemon all call it.
public final class Engine: Sendable {
    public let desired: DesiredState
    public let state: StateDirectory
    public let catalog: Catalog
    public let instance: String
    public let sessions: PoolSessions
    public let logger: Logger
    /// Per pool, the snapshot and transfer limits of its Pool spec, shared by every plan this
    /// engine executes (the daemon runs several keys' plans at once).
    let limiters: [String: PoolLimiters]
    /// The appliances of the declared AppliancePools, leased to transfers: one registry for every
    /// plan this engine executes, so concurrent plans never provision the same name or address.
    public let appliances: ApplianceLeases

    /// Prepares sessions to every declared pool (lazily: nothing is contacted yet).
    public init(desired: DesiredState, state: StateDirectory, logger: Logger = Logger(label: "haven")) throws {
        self.desired = desired
        self.state = state
        self.logger = logger
        catalog = try state.catalog()
        instance = try state.instanceID()
        sessions = PoolSessions(desired: desired)
        var limiters: [String: PoolLimiters] = [:]
        for p in desired.pools {
            limiters[p.name] = PoolLimiters(snapshots: AsyncLimiter(p.spec.limits.snapshots), transfers: AsyncLimiter(p.spec.limits.transfers))
        }
        self.limiters = limiters
        let settings = Dictionary(uniqueKeysWithValues: desired.appliancePools.map { ($0.name, AppliancePoolSettings($0)) })
        var l = logger
        l[metadataKey: "component"] = "appliances"
        let applianceLogger = l
        appliances = ApplianceLeases(settings: settings, sessions: sessions, catalog: catalog, state: state, instance: instance, now: { Date() },
                                     log: { applianceLogger.info("\($0)") })
    }

    public var clients: [String: XenAPIClient] { sessions.clients }

    /// Reads each pool on its own: one that cannot be read is reported in `unreachable` and the
    /// others are still observed (one pool down never stops the backups of the rest).
    /// `guestMetrics`: read guests' addresses on every pool, not only those with an AppliancePool.
    public func observe(pools: [String]? = nil, guestMetrics: Bool = false) async -> Observation {
        var out = Observation()
        let names = pools ?? desired.pools.map(\.name)
        await withTaskGroup(of: (String, Result<ObservedPool, any Error>).self) { g in
            for name in names {
                if let why = sessions.unusable[name] {
                    out.unreachable[name] = why
                    continue
                }
                guard let c = sessions.client(name) else { continue }
                let metrics = guestMetrics || desired.appliancePools.contains { $0.spec.pool.value == name }
                g.addTask { (name, await Result(catching: { try await Observer.observe(c, name: name, guestMetrics: metrics) })) }
            }
            for await (name, r) in g {
                switch r {
                case .success(let o): out.pools[name] = o
                case .failure(let e):
                    let url = desired.pool(named: name)?.spec.url ?? ""
                    out.unreachable[name] = "\(url): \(e)"
                    logger.info("cannot read pool", metadata: ["pool": "\(name)", "error": "\(e)"])
                }
            }
        }
        return out
    }

    /// `now` is taken to the whole second, as a saved plan records it: the same plan can be made again from it.
    public func plan(_ observation: Observation, now: Date, scope: Set<String>? = nil, force: ForceBackup? = nil,
                     failback: FailbackRequest? = nil, keys: KeyScope? = nil) throws -> Plan {
        let now = Date(timeIntervalSince1970: now.timeIntervalSince1970.rounded(.down))
        try checkRepositoryKeys(scope: scope)
        return Planner(instance: instance).plan(desired: desired, observed: observation.pools, unreachable: observation.unreachable,
                                         catalog: try planningView(), now: now, scope: scope, force: force, failback: failback, keys: keys)
    }

    /// The catalog as planning sees it: without leases of processes that are gone (a run killed
    /// mid-transfer), so that `diff` (which does not clear them) plans what `apply` (which does) will.
    func planningView() throws -> CatalogView {
        var view = try catalog.view()
        view.leases.removeAll { ApplianceLeases.isStale(holder: $0.holder) }
        // An appliance intent of a live process (this one included) is a provisioning in flight, not an orphan.
        view.intents.removeAll { i in i.applianceHolder.map { !ApplianceLeases.isStale(holder: $0) } ?? false }
        return view
    }

    public func fingerprint(_ observation: Observation) throws -> String {
        Planner(instance: instance).fingerprint(desired: desired, observed: observation.pools, catalog: try planningView())
    }

    public func executor(plan: Plan, now: @escaping @Sendable () -> Date, emit: @escaping @Sendable (ExecutionEvent) -> Void) -> Executor {
        Executor(context: ExecutionContext(sessions: sessions, catalog: catalog, state: state, instance: instance, plan: plan, now: now,
                                           logger: logger, emit: emit, limiters: limiters, appliances: appliances))
    }

    public func logout() async { await sessions.logoutAll() }

    /// The appliance leases (the same registry the plans this engine executes use).
    public func applianceLeases() -> ApplianceLeases { appliances }

    /// Runs `body`, then logs every session out, whether `body` returned, threw or was cancelled.
    public func withSessions<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        do {
            let v = try await body()
            await logout()
            return v
        } catch {
            await logout()
            throw error
        }
    }
}

/// What `--target KIND/NAME` restricts a run to.
public struct TargetScope: Sendable {
    /// Pools to observe and act on.
    public var pools: [String]
    /// BackupPolicies to plan; nil: all of them (and clean-up runs).
    public var policies: Set<String>?

    public init(pools: [String], policies: Set<String>?) {
        self.pools = pools
        self.policies = policies
    }

    public static func parse(_ target: String?, in desired: DesiredState) throws -> TargetScope {
        guard let target else { return TargetScope(pools: desired.pools.map(\.name), policies: nil) }
        let parts = target.split(separator: "/", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { throw EngineError(.notFound, target, "--target takes KIND/NAME, e.g. BackupPolicy/daily or Pool/lab") }
        switch parts[0] {
        case "BackupPolicy":
            guard let p = desired.backupPolicies.first(where: { $0.name == parts[1] }) else {
                let names = desired.backupPolicies.map(\.name)
                throw EngineError(.notFound, target, "no BackupPolicy '\(parts[1])' is declared" + didYouMean(parts[1], names))
            }
            return TargetScope(pools: [p.spec.pool.value], policies: [p.name])
        case "Pool":
            guard desired.pools.contains(where: { $0.name == parts[1] }) else {
                throw EngineError(.notFound, target, "no Pool '\(parts[1])' is declared" + didYouMean(parts[1], desired.pools.map(\.name)))
            }
            return TargetScope(pools: [parts[1]], policies: nil)
        default:
            throw EngineError(.notFound, target, "--target works on BackupPolicy/NAME or Pool/NAME")
        }
    }

    public static func didYouMean(_ word: String, _ candidates: [String]) -> String {
        closestMatch(word, candidates).map { "; did you mean '\($0)'?" } ?? ""
    }

    /// The closest of `candidates` to `word` (edit distance, case-insensitive), when close enough to be a typo.
    public static func closestMatch(_ word: String, _ candidates: [String]) -> String? {
        func distance(_ a: [Character], _ b: [Character]) -> Int {
            if a.isEmpty { return b.count }
            var row = Array(0...b.count)
            for i in 1...a.count {
                var prev = row[0]
                row[0] = i
                for j in stride(from: 1, through: b.count, by: 1) {
                    let old = row[j]
                    row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
                    prev = old
                }
            }
            return row[b.count]
        }
        let best = candidates.map { ($0, distance(Array(word.lowercased()), Array($0.lowercased()))) }.min { $0.1 < $1.1 }
        guard let (name, d) = best, d <= max(2, word.count / 3) else { return nil }
        return name
    }
}
