import Foundation
import HavenCatalog
import HavenCore
import HavenSpec

/// An appliance as `haven appliances list` shows it.
public struct ApplianceStatus: Sendable, Codable, Hashable {
    public var name: String
    public var uuid: String
    public var pool: String
    public var appliancePool: String
    /// The address it reports (else the one it was given); nil when it has none yet.
    public var address: String?
    /// "static" or "dhcp".
    public var addressing: String
    /// The static address it was given, when one.
    public var staticAddress: String?
    /// The pool's power state; "gone" when the pool no longer has it; "unknown" when the pool cannot be read.
    public var power: String
    /// "idle" or "in use" (a lease held, or disks of a transfer plugged in).
    public var use: String
    public var pin: String
    /// What is wrong, when something is: its AppliancePool is no longer declared, it reports another address than it was given…
    public var problems: [String]
}

extension Engine {
    /// The pools and AppliancePools `target` names: nil → every pool; a Pool's name → its
    /// AppliancePools; an AppliancePool's name → that one.
    public func applianceScope(_ target: String?) throws -> (pools: [String], appliancePool: String?) {
        guard let target else { return (desired.pools.map(\.name).sorted(), nil) }
        if let ap = desired.appliancePool(named: target) { return ([ap.spec.pool.value], ap.name) }
        if desired.pool(named: target) != nil { return ([target], nil) }
        let recorded = try catalog.view().appliances
        if let r = recorded.first(where: { $0.appliancePool == target }) { return ([r.pool], target) }
        let names = desired.pools.map(\.name) + desired.appliancePools.map(\.name)
        throw EngineError(.notFound, target, "no Pool or AppliancePool '\(target)' is declared" + TargetScope.didYouMean(target, names))
    }

    /// This haven's appliances (what its catalog records and its inventory holds), with what each pool says of them.
    public func appliances(_ target: String?) async throws -> [ApplianceStatus] {
        let (pools, only) = try applianceScope(target)
        let observation = await observe(pools: pools, guestMetrics: true)
        await logout()
        let view = try catalog.view()
        let declared = Set(desired.appliancePools.map { "\($0.spec.pool.value)\u{0}\($0.name)" })
        var out: [ApplianceStatus] = []
        for poolName in pools {
            let inventory = Set(view.inventory.filter { $0.pool == poolName && $0.cls == "VM" && $0.role == OwnershipMarks.applianceRole }.map(\.uuid))
            let records = view.appliances.filter { $0.pool == poolName }
            var uuids = Set(records.map(\.uuid))
            let observed = observation.pools[poolName]
            for a in observed?.appliances ?? [] where a.owner == instance && inventory.contains(a.uuid) { uuids.insert(a.uuid) }
            for uuid in uuids {
                let a = observed?.appliances.first { $0.uuid == uuid }
                let r = records.first { $0.uuid == uuid }
                let ap = a?.appliancePool ?? r?.appliancePool ?? ""
                if let only, ap != only { continue }
                let given = a.map { $0.staticAddress } ?? r.flatMap { $0.isStatic ? $0.staticAddress : nil }
                var s = ApplianceStatus(
                    name: a?.name ?? r?.name ?? uuid, uuid: uuid, pool: poolName, appliancePool: ap, address: a?.address ?? given,
                    addressing: given == nil ? "dhcp" : "static", staticAddress: given, power: a?.powerState ?? (observed == nil ? "unknown" : "gone"),
                    use: "idle", pin: r?.pin ?? "", problems: [])
                let leased = view.leases.first { $0.pool == poolName && $0.uuid == uuid }
                if leased != nil || !(a?.foreignDisks.isEmpty ?? true) { s.use = "in use" }
                if let leased { s.problems.append("leased by \(leased.holder) since \(ISO8601DateFormatter().string(from: leased.since))") }
                if let a, !a.foreignDisks.isEmpty { s.problems.append("disks of a transfer plugged in: \(a.foreignDisks.joined(separator: ", "))") }
                if observed == nil { s.problems.append("pool \(poolName) cannot be read: \(observation.unreachable[poolName] ?? "")") }
                if observed != nil && a == nil { s.problems.append("gone from the pool; the next `haven apply` clears what is left of it") }
                if !declared.contains("\(poolName)\u{0}\(ap)") { s.problems.append("AppliancePool \(ap) is no longer declared; the next `haven apply` removes it") }
                if let a, a.isRunning {
                    if a.addresses.isEmpty {
                        s.problems.append("its guest reports no address")
                    } else if let given, !a.addresses.contains(given) {
                        s.problems.append("it was given \(given) but reports \(a.addresses.joined(separator: ", "))")
                    }
                }
                if r == nil { s.problems.append("not in the catalog's appliance records (no certificate pin): `haven apply` replaces it") }
                out.append(s)
            }
        }
        return out.sorted { ($0.pool, $0.appliancePool) != ($1.pool, $1.appliancePool)
            ? ($0.pool, $0.appliancePool) < ($1.pool, $1.appliancePool) : ApplianceNaming.order($0.name, $1.name) }
    }
}
