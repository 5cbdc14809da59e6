import Foundation
import HavenCatalog
import HavenCore
import HavenSpec
import XenAPI

/// Everything one `diff` or `apply` needs: the desired state, this installation's state
/// directory and catalog, sessions to the pools, and what they look like now.
public final class Engine: Sendable {
    public let desired: DesiredState
    public let state: StateDirectory
    public let catalog: Catalog
    public let instance: String
    public let clients: [String: XenAPIClient]

    /// Opens sessions to every declared pool (lazily: nothing is contacted yet).
    public init(desired: DesiredState, state: StateDirectory) throws {
        self.desired = desired
        self.state = state
        catalog = try state.catalog()
        instance = try state.instanceID()
        var clients: [String: XenAPIClient] = [:]
        for p in desired.pools { clients[p.name] = try PoolConnection.client(for: p) }
        self.clients = clients
    }

    /// Reads the given pools (all declared when nil). A pool that cannot be read is an error:
    /// planning without it could look like "nothing to do".
    public func observe(pools: [String]? = nil) async throws -> [String: ObservedPool] {
        var out: [String: ObservedPool] = [:]
        for name in pools ?? desired.pools.map(\.name) {
            guard let c = clients[name] else { continue }
            do {
                out[name] = try await Observer.observe(c, name: name)
            } catch {
                throw EngineError(.observe, name, "cannot read Pool '\(name)' (\(desired.pool(named: name)?.spec.url ?? "")): \(error)")
            }
        }
        return out
    }

    public func plan(observed: [String: ObservedPool], now: Date, scope: Set<String>? = nil) throws -> Plan {
        Planner(instance: instance).plan(desired: desired, observed: observed, catalog: try catalog.view(), now: now, scope: scope)
    }

    public func fingerprint(observed: [String: ObservedPool]) throws -> String {
        Planner(instance: instance).fingerprint(desired: desired, observed: observed, catalog: try catalog.view())
    }

    public func executor(observed: [String: ObservedPool], now: @escaping @Sendable () -> Date,
                         emit: @escaping @Sendable (ExecutionEvent) -> Void) -> Executor {
        Executor(desired: desired, catalog: catalog, state: state, instance: instance, clients: clients, observed: observed, now: now, emit: emit)
    }

    public func logout() async {
        for c in clients.values { await c.logout() }
    }
}

/// What `--target KIND/NAME` restricts a run to.
public struct TargetScope: Sendable {
    /// Pools to observe and act on.
    public var pools: [String]
    /// BackupPolicies to plan; nil: all of them (and clean-up runs).
    public var policies: Set<String>?

    public static func parse(_ target: String?, in desired: DesiredState) throws -> TargetScope {
        guard let target else { return TargetScope(pools: desired.pools.map(\.name), policies: nil) }
        let parts = target.split(separator: "/", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { throw EngineError(.notFound, target, "--target takes KIND/NAME, e.g. BackupPolicy/daily or Pool/lab") }
        switch parts[0] {
        case "BackupPolicy":
            guard let p = desired.backupPolicies.first(where: { $0.name == parts[1] }) else {
                throw EngineError(.notFound, target, "no BackupPolicy '\(parts[1])' is declared")
            }
            return TargetScope(pools: [p.spec.pool.value], policies: [p.name])
        case "Pool":
            guard desired.pools.contains(where: { $0.name == parts[1] }) else { throw EngineError(.notFound, target, "no Pool '\(parts[1])' is declared") }
            return TargetScope(pools: [parts[1]], policies: nil)
        default:
            throw EngineError(.notFound, target, "--target works on BackupPolicy/NAME or Pool/NAME")
        }
    }
}
