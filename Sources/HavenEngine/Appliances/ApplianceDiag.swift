import Foundation
import HavenCatalog
import HavenCore
import HavenMover
import HavenSpec
import XenAPI

#if canImport(Glibc)
    import Glibc
#endif

/// One line of `haven appliances diag`: what was checked, on which appliance, how it went, and
/// what to fix.
public struct ApplianceCheck: Sendable, Codable, Hashable {
    public enum Status: String, Sendable, Codable { case ok, failed, skipped }

    /// The appliance, or the AppliancePool for checks of the pool as a whole.
    public var subject: String
    /// `setup`, `address`, `haven-to-appliance`, `appliance-to-haven`, `peer`, `name-resolution`.
    public var check: String
    public var status: Status
    public var detail: String
    public var fix: String?

    public init(_ subject: String, _ check: String, _ status: Status, _ detail: String, fix: String? = nil) {
        self.subject = subject
        self.check = check
        self.status = status
        self.detail = detail
        self.fix = fix
    }
}

extension Engine {
    /// What Alike's ABD diagnostic checks, for the appliances of a Pool or one AppliancePool:
    /// the template, SR and network exist; each running appliance has its address; haven
    /// reaches its mover on 2811 (TLS, the recorded pin, a token it accepts, identify); it
    /// reaches haven back; it reaches the peer AppliancePool's appliance of an abd
    /// ReplicationPolicy; names resolve. Nothing on the pool is changed.
    public func diagnoseAppliances(_ target: String) async throws -> [ApplianceCheck] {
        let (pools, only) = try applianceScope(target)
        let aps = desired.appliancePools.filter { pools.contains($0.spec.pool.value) && (only == nil || $0.name == only) }.sorted { $0.name < $1.name }
        guard !aps.isEmpty else {
            throw EngineError(.notFound, target, "no AppliancePool is declared on \(target)")
        }
        // The peers' pools too: an abd replication checks the other side's appliances.
        let peers = aps.flatMap { peerAppliancePools(of: $0.name) }
        let observed = await observe(pools: Array(Set(pools + peers.map(\.spec.pool.value))).sorted(), guestMetrics: true)
        await logout()
        let view = try catalog.view()
        var out: [ApplianceCheck] = []
        for ap in aps {
            let poolName = ap.spec.pool.value
            guard let pool = observed.pools[poolName] else {
                out.append(ApplianceCheck(ap.name, "setup", .failed, "pool \(poolName) cannot be read: \(observed.unreachable[poolName] ?? "")",
                                          fix: "check spec.url and the credentials of Pool \(poolName)"))
                continue
            }
            out += setupChecks(ap, pool)
            let mine = appliances(of: ap.name, in: pool, view: view)
            if mine.isEmpty {
                out.append(ApplianceCheck(ap.name, "address", .failed, "AppliancePool \(ap.name) has no appliance on pool \(poolName)",
                                          fix: "`haven apply` provisions appliances when transfers through AppliancePool \(ap.name) are planned"))
                continue
            }
            out += nameResolution(ap)
            let myPeers = peerAppliancePools(of: ap.name)
            for a in mine {
                // A check that cannot run because an earlier one failed still gets its line.
                func skip(_ checks: [String], _ why: String) {
                    for c in checks { out.append(ApplianceCheck(a.name, c, .skipped, "not checked: \(why)")) }
                }
                let later = ["appliance-to-haven"] + (myPeers.isEmpty ? [] : ["peer"])
                let address = addressCheck(a)
                out.append(address)
                guard address.status == .ok, let ip = a.address else {
                    skip(["haven-to-appliance"] + later, "the appliance has no address")
                    continue
                }
                let record = view.appliances.first { $0.pool == poolName && $0.uuid == a.uuid }
                let key = state.readApplianceKey(pool: poolName, uuid: a.uuid) ?? []
                let reach = await havenToAppliance(a, ip, pin: record?.pin ?? "", key: key)
                out.append(reach)
                guard reach.status == .ok else {
                    skip(later, "haven cannot talk to the appliance's mover")
                    continue
                }
                out.append(await applianceToHaven(a, ip, pin: record?.pin ?? "", key: key))
                for peer in myPeers {
                    out.append(await peerCheck(a, ip, pin: record?.pin ?? "", key: key, peer: peer, observed: observed, view: view))
                }
            }
        }
        return out
    }

    /// AppliancePools used together with `name` by a ReplicationPolicy with method abd.
    func peerAppliancePools(of name: String) -> [AppliancePool] {
        var out: [AppliancePool] = []
        for r in desired.replicationPolicies where r.spec.method == .abd {
            let (s, t) = (r.spec.appliances.source?.value, r.spec.appliances.target?.value)
            if s == name, let t, let p = desired.appliancePool(named: t), !out.contains(where: { $0.name == t }) { out.append(p) }
            if t == name, let s, let p = desired.appliancePool(named: s), !out.contains(where: { $0.name == s }) { out.append(p) }
        }
        return out
    }

    func appliances(of ap: String, in pool: ObservedPool, view: CatalogView) -> [ObservedAppliance] {
        let inventory = Set(view.inventory.filter { $0.pool == pool.name && $0.cls == "VM" }.map(\.uuid))
        return pool.appliances.filter { $0.owner == instance && $0.appliancePool == ap && inventory.contains($0.uuid) }
            .sorted { ApplianceNaming.order($0.name, $1.name) }
    }

    func setupChecks(_ ap: AppliancePool, _ pool: ObservedPool) -> [ApplianceCheck] {
        var missing: [String] = []
        if pool.templates[ap.spec.template] == nil { missing.append("template '\(ap.spec.template)' (spec.template)") }
        if !pool.srs.values.contains(where: { $0.name == ap.spec.sr }) { missing.append("SR '\(ap.spec.sr)' (spec.sr)") }
        if !pool.networks.contains(ap.spec.network) { missing.append("network '\(ap.spec.network)' (spec.network)") }
        if missing.isEmpty {
            return [ApplianceCheck(ap.name, "setup", .ok, "template \(ap.spec.template), SR \(ap.spec.sr) and network \(ap.spec.network) exist on pool \(pool.name)")]
        }
        return [ApplianceCheck(ap.name, "setup", .failed, "pool \(pool.name) has no \(missing.joined(separator: ", no "))",
                               fix: "import the appliance template or correct the AppliancePool's spec")]
    }

    func addressCheck(_ a: ObservedAppliance) -> ApplianceCheck {
        guard a.isRunning else {
            return ApplianceCheck(a.name, "address", .failed, "\(a.name) is \(a.powerState.lowercased())",
                                  fix: "`haven apply` starts idle appliances again; or `xe vm-start uuid=\(a.uuid)`")
        }
        if let given = a.staticAddress {
            if a.addresses.contains(given) { return ApplianceCheck(a.name, "address", .ok, "\(given) (static), as given") }
            return ApplianceCheck(a.name, "address", .failed,
                                  a.addresses.isEmpty ? "it was given \(given) but its guest reports no address"
                                      : "it was given \(given) but its guest reports \(a.addresses.joined(separator: ", "))",
                                  fix: "check that the appliance's guest reads vm-data/haven/ip from xenstore and that its guest agent runs")
        }
        if let first = a.addresses.first { return ApplianceCheck(a.name, "address", .ok, "\(first) (DHCP)") }
        return ApplianceCheck(a.name, "address", .failed, "it takes its address from DHCP and its guest reports none",
                              fix: "check that the AppliancePool's network serves DHCP, or add static addresses to spec.addresses")
    }

    func havenToAppliance(_ a: ObservedAppliance, _ ip: String, pin: String, key: [UInt8]) async -> ApplianceCheck {
        let port = MoverSeam.port
        guard !pin.isEmpty else {
            return ApplianceCheck(a.name, "haven-to-appliance", .failed, "haven has no certificate pin for \(a.name)",
                                  fix: "remove the appliance (`haven apply` after lowering spec.max, or delete it) so haven provisions one it knows")
        }
        guard !key.isEmpty else {
            return ApplianceCheck(a.name, "haven-to-appliance", .failed, "haven has no token key for \(a.name) in its state directory (\(state.url.path)/appliances)",
                                  fix: "run diag with the state directory that provisioned it, or let haven replace the appliance")
        }
        do {
            let id = try await MoverSeam.identify(host: ip, port: port, pin: pin, tokenKey: key)
            return ApplianceCheck(a.name, "haven-to-appliance", .ok, "\(ip):\(port): TLS, certificate matches the pin, token accepted; mover \(id.name) (\(id.softwareVersion))")
        } catch {
            let (detail, fix) = MoverSeam.explain(error, host: ip, port: port, from: "haven")
            return ApplianceCheck(a.name, "haven-to-appliance", .failed, detail, fix: fix)
        }
    }

    func applianceToHaven(_ a: ObservedAppliance, _ ip: String, pin: String, key: [UInt8]) async -> ApplianceCheck {
        do {
            let said = try await MoverSeam.probeBack(host: ip, port: MoverSeam.port, pin: pin, tokenKey: key)
            return ApplianceCheck(a.name, "appliance-to-haven", .ok, said)
        } catch {
            let (detail, fix) = MoverSeam.explain(error, host: ip, port: MoverSeam.port, from: a.name)
            return ApplianceCheck(a.name, "appliance-to-haven", .failed, detail, fix: fix)
        }
    }

    func peerCheck(_ a: ObservedAppliance, _ ip: String, pin: String, key: [UInt8], peer: AppliancePool, observed: Observation,
                   view: CatalogView) async -> ApplianceCheck {
        let subject = "\(a.name) ↔ \(peer.name)"
        guard let pool = observed.pools[peer.spec.pool.value] else {
            return ApplianceCheck(subject, "peer", .failed, "pool \(peer.spec.pool.value) cannot be read", fix: "check Pool \(peer.spec.pool.value)")
        }
        guard let other = appliances(of: peer.name, in: pool, view: view).first(where: { $0.isRunning && $0.address != nil }), let otherIP = other.address else {
            return ApplianceCheck(subject, "peer", .failed, "AppliancePool \(peer.name) has no running appliance to connect to",
                                  fix: "`haven apply` provisions appliances on pool \(peer.spec.pool.value) when abd replication needs them")
        }
        let otherPin = view.appliances.first { $0.pool == pool.name && $0.uuid == other.uuid }?.pin ?? ""
        let otherKey = state.readApplianceKey(pool: pool.name, uuid: other.uuid) ?? []
        do {
            let said = try await MoverSeam.probePeer(host: ip, port: MoverSeam.port, pin: pin, tokenKey: key, peer: otherIP, peerPin: otherPin, peerKey: otherKey)
            return ApplianceCheck(subject, "peer", .ok, "\(a.name) (\(ip)) → \(other.name) (\(otherIP)): \(said)")
        } catch {
            let (detail, fix) = MoverSeam.explain(error, host: otherIP, port: MoverSeam.port, from: a.name)
            return ApplianceCheck(subject, "peer", .failed, detail, fix: fix)
        }
    }

    /// The names haven connects to for this AppliancePool's pool resolve.
    func nameResolution(_ ap: AppliancePool) -> [ApplianceCheck] {
        guard let url = desired.pool(named: ap.spec.pool.value)?.spec.url, let host = URL(string: url)?.host else { return [] }
        if IPAddress.parse(host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))) != nil {
            return [ApplianceCheck(ap.name, "name-resolution", .ok, "pool \(ap.spec.pool.value) is reached by address (\(host)): nothing to resolve")]
        }
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, nil, &res)
        defer { if res != nil { freeaddrinfo(res) } }
        if rc == 0 { return [ApplianceCheck(ap.name, "name-resolution", .ok, "\(host) (pool \(ap.spec.pool.value)) resolves")] }
        return [ApplianceCheck(ap.name, "name-resolution", .failed, "\(host) (pool \(ap.spec.pool.value)) does not resolve: \(String(cString: gai_strerror(rc)))",
                               fix: "check the DNS servers of this machine, and spec.dns of AppliancePool \(ap.name) for the appliances")]
    }
}
