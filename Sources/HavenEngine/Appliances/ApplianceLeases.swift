import Foundation
import HavenCatalog
import HavenCore
import HavenMover
import HavenSpec
import XenAPI

#if canImport(Glibc)
    import Glibc
#endif

/// An appliance held by one transfer until it is given back.
public struct ApplianceLease: Sendable, Hashable {
    public let appliance: ApplianceInfo
    /// Who holds it (`pid N`), as recorded in the catalog.
    public let holder: String
}

/// Hands out appliances of an AppliancePool, one per concurrent transfer: an idle running one
/// first (reused: nothing is created), else a halted one started, else a new one provisioned
/// while the AppliancePool has fewer than `max` (the next free static address, DHCP once they
/// are used up and `dhcpFallback` allows it), else the caller waits until one is given back.
/// Every lease is recorded in the catalog (the appliance is in use: never removed) and cleared
/// on release.
public actor ApplianceLeases {
    let settings: [String: AppliancePoolSettings]
    let sessions: PoolSessions
    let catalog: Catalog
    let state: StateDirectory
    let instance: String
    let now: @Sendable () -> Date
    let log: @Sendable (String) -> Void
    let holder = "pid \(getpid())"

    private var members: [String: [ApplianceInfo]] = [:]
    /// One read of the pool per AppliancePool; concurrent first leases wait for the same one.
    private var loading: [String: Task<Void, any Error>] = [:]
    private var busy: Set<String> = []
    /// Held by another process (its lease is in the catalog): skipped.
    private var elsewhere: Set<String> = []
    private var inFlight: [String: Int] = [:]
    private var reservedAddresses: [String: [IPAddress: String]] = [:]
    private var reservedNames: Set<String> = []
    private var waiters: [String: [CheckedContinuation<Void, Never>]] = [:]

    init(settings: [String: AppliancePoolSettings], sessions: PoolSessions, catalog: Catalog, state: StateDirectory, instance: String,
         now: @escaping @Sendable () -> Date, log: @escaping @Sendable (String) -> Void) {
        self.settings = settings
        self.sessions = sessions
        self.catalog = catalog
        self.state = state
        self.instance = instance
        self.now = now
        self.log = log
    }

    func provisioner(_ pool: String, log: (@Sendable (String) -> Void)? = nil) throws -> ApplianceProvisioner {
        guard let c = sessions.client(pool) else { throw EngineError(.connect, pool, "no session to pool \(pool)") }
        return ApplianceProvisioner(client: c, pool: pool, catalog: catalog, state: state, instance: instance, log: log ?? self.log)
    }

    /// A provisioning the plan decided: its name and address are reserved here first, so a lease
    /// provisioning at the same time (or another plan of this engine) never takes them too.
    func provisionPlanned(_ job: ApplianceProvision, pool: String, now: Date, log: @escaping @Sendable (String) -> Void) async throws -> ApplianceInfo {
        let ip = job.address.ip.flatMap(IPAddress.parse)
        if reservedNames.contains(job.name) || (members[job.appliancePool] ?? []).contains(where: { $0.name == job.name }) {
            throw EngineError(.action, job.name, "appliance \(job.name) is being provisioned already; the next plan sees it")
        }
        if let ip, let holder = reservedAddresses[pool]?[ip] {
            throw EngineError(.action, job.name, "address \(ip) is being given to appliance \(holder); the next plan picks another")
        }
        reservedNames.insert(job.name)
        if let ip { reservedAddresses[pool, default: [:]][ip] = job.name }
        inFlight[job.appliancePool, default: 0] += 1
        defer {
            reservedNames.remove(job.name)
            if let ip { reservedAddresses[pool]?[ip] = nil }
            inFlight[job.appliancePool, default: 0] -= 1
            wakeAll(job.appliancePool)
        }
        let info = try await provisioner(pool, log: log).provision(job, now: now)
        replace(info)
        return info
    }

    func settings(_ ap: String) throws -> AppliancePoolSettings {
        guard let s = settings[ap] else { throw EngineError(.notFound, ap, "no AppliancePool '\(ap)' is declared on a pool in this run") }
        return s
    }

    /// Waits for an appliance of `appliancePool` and holds it. Throws when none can ever come
    /// (no address left and none to wait for, the template gone, provisioning failed).
    public func lease(_ appliancePool: String) async throws -> ApplianceLease {
        let s = try settings(appliancePool)
        try await load(s)
        while true {
            try Task.checkCancellation()
            let list = members[appliancePool] ?? []
            for m in list where m.running && !busy.contains(m.uuid) && !elsewhere.contains(m.uuid) {
                if let l = try take(m) { return l }
            }
            if let m = list.first(where: { !$0.running && !busy.contains($0.uuid) && !elsewhere.contains($0.uuid) }) {
                busy.insert(m.uuid)
                do {
                    let info = try await provisioner(s.pool).start(ApplianceTarget(appliancePool: appliancePool, uuid: m.uuid, name: m.name))
                    replace(info)
                    busy.remove(info.uuid)
                    if let l = try take(info) { return l }
                } catch {
                    busy.remove(m.uuid)
                    members[appliancePool]?.removeAll { $0.uuid == m.uuid }
                    log("appliance \(m.name) does not start (\(error)); another one is used")
                }
                continue
            }
            if list.count + inFlight[appliancePool, default: 0] < s.max {
                inFlight[appliancePool, default: 0] += 1
                let made: ApplianceInfo?
                do {
                    made = try await provisionNext(s)
                } catch {
                    inFlight[appliancePool, default: 0] -= 1
                    wakeAll(appliancePool)
                    throw error
                }
                inFlight[appliancePool, default: 0] -= 1
                if let made {
                    members[appliancePool, default: []].append(made)
                    if let l = try take(made) { return l }
                    continue
                }
            }
            // Given back while this lease was looking: take it on the next turn.
            let usable = (members[appliancePool] ?? []).filter { !elsewhere.contains($0.uuid) }
            if usable.contains(where: { !busy.contains($0.uuid) }) { continue }
            if usable.isEmpty && inFlight[appliancePool, default: 0] == 0 {
                let others = (members[appliancePool] ?? []).filter { elsewhere.contains($0.uuid) }.map(\.name)
                throw EngineError(.action, appliancePool, others.isEmpty
                    ? "AppliancePool \(appliancePool) has no appliance and cannot make one: every static address is taken and dhcpFallback is off"
                    : "every appliance of AppliancePool \(appliancePool) (\(others.joined(separator: ", "))) is in use by another haven process")
            }
            await withCheckedContinuation { waiters[appliancePool, default: []].append($0) }
        }
    }

    /// Gives an appliance back: it stays running, idle, for the next transfer.
    public func release(_ lease: ApplianceLease) {
        let a = lease.appliance
        busy.remove(a.uuid)
        do { try catalog.release(pool: a.pool, uuid: a.uuid, holder: lease.holder) } catch { log("cannot clear the lease of \(a.name): \(error)") }
        if var list = waiters[a.appliancePool], !list.isEmpty {
            list.removeFirst().resume()
            waiters[a.appliancePool] = list
        }
    }

    /// Runs `body` with an appliance, giving it back whatever happens.
    public func withLease<T: Sendable>(_ appliancePool: String, _ body: @Sendable (ApplianceLease) async throws -> T) async throws -> T {
        let l = try await lease(appliancePool)
        do {
            let v = try await body(l)
            release(l)
            return v
        } catch {
            release(l)
            throw error
        }
    }

    /// The appliances known for an AppliancePool, as this run sees them.
    public func appliances(_ appliancePool: String) -> [ApplianceInfo] { members[appliancePool] ?? [] }

    /// An appliance a plan action provisioned or started: leasable at once.
    func register(_ info: ApplianceInfo) { replace(info) }

    /// An appliance a plan action removed.
    func forget(_ uuid: String) {
        for k in members.keys { members[k]?.removeAll { $0.uuid == uuid } }
    }

    private func replace(_ info: ApplianceInfo) {
        if let i = members[info.appliancePool]?.firstIndex(where: { $0.uuid == info.uuid }) {
            members[info.appliancePool]?[i] = info
        } else {
            members[info.appliancePool, default: []].append(info)
        }
    }

    private func take(_ m: ApplianceInfo) throws -> ApplianceLease? {
        guard try catalog.lease(ApplianceLeaseRecord(pool: m.pool, uuid: m.uuid, holder: holder, since: now())) else {
            elsewhere.insert(m.uuid)
            return nil
        }
        busy.insert(m.uuid)
        return ApplianceLease(appliance: m, holder: holder)
    }

    private func wakeAll(_ ap: String) {
        for w in waiters[ap] ?? [] { w.resume() }
        waiters[ap] = []
    }

    /// This haven's appliances of the AppliancePool on its pool (marked and in the inventory). Two calls.
    private func load(_ s: AppliancePoolSettings) async throws {
        if let t = loading[s.name] { return try await t.value }
        let t = Task { try await self.read(s) }
        loading[s.name] = t
        do {
            try await t.value
        } catch {
            loading[s.name] = nil
            throw error
        }
    }

    private func read(_ s: AppliancePoolSettings) async throws {
        let client = try provisioner(s.pool).client
        let vms = try await client.records(VMRecord.self)
        let metrics = try await client.records(VMGuestMetricsRecord.self)
        let view = try catalog.view()
        let inventory = Set(view.inventory.filter { $0.pool == s.pool && $0.cls == "VM" }.map(\.uuid))
        for (_, vm) in vms where vm.isRealVM && inventory.contains(vm.uuid) && vm.otherConfig[OwnershipMarks.owner] == instance
            && vm.otherConfig[OwnershipMarks.role] == OwnershipMarks.applianceRole && vm.otherConfig[OwnershipMarks.appliancePool] == s.name {
            guard !(members[s.name] ?? []).contains(where: { $0.uuid == vm.uuid }) else { continue }
            let given = vm.xenstoreData[MoverXenstore.ip]
            let reported = metrics[vm.guestMetrics]?.addresses ?? []
            let record = view.appliances.first { $0.pool == s.pool && $0.uuid == vm.uuid }
            members[s.name, default: []].append(ApplianceInfo(
                pool: s.pool, appliancePool: s.name, uuid: vm.uuid, name: vm.nameLabel, address: given ?? reported.first ?? "",
                isStatic: given != nil, pin: record?.pin ?? "", running: vm.powerState == .running && (given.map(reported.contains) ?? !reported.isEmpty)))
        }
        members[s.name]?.sort { ApplianceNaming.order($0.name, $1.name) }
    }

    /// Provisions one more appliance with the next free address: nil when every static address
    /// is taken and DHCP is off (then the caller waits for one to be given back).
    private func provisionNext(_ s: AppliancePoolSettings) async throws -> ApplianceInfo? {
        let p = try provisioner(s.pool)
        let vms = try await p.client.records(VMRecord.self)
        let metrics = try await p.client.records(VMGuestMetricsRecord.self)
        let srs = try await p.client.records(SRRecord.self)
        guard let template = vms.values.first(where: { $0.isATemplate && !$0.isASnapshot && $0.nameLabel == s.template }) else {
            throw EngineError(.action, s.template, "pool \(s.pool) has no template named '\(s.template)' (AppliancePool \(s.name))")
        }
        guard let sr = srs.values.first(where: { $0.nameLabel == s.sr }) else {
            throw EngineError(.action, s.sr, "pool \(s.pool) has no SR named '\(s.sr)' (AppliancePool \(s.name))")
        }
        // Taken: the hosts' interfaces, what any other VM reports, what any appliance was given or reports, what this run reserved.
        let hostAddresses = try await p.client.hostInterfaceAddresses()
        // No suspension from here to the reservation below: concurrent provisions see each other's addresses.
        var taken = reservedAddresses[s.pool] ?? [:]
        for (text, host) in hostAddresses { if let ip = IPAddress.parse(text), taken[ip] == nil { taken[ip] = host } }
        var names = reservedNames
        for (_, vm) in vms where vm.isRealVM {
            let isAppliance = vm.otherConfig[OwnershipMarks.role] == OwnershipMarks.applianceRole
            if isAppliance { names.insert(vm.nameLabel) }
            for a in (metrics[vm.guestMetrics]?.addresses ?? []) + (isAppliance ? [vm.xenstoreData[MoverXenstore.ip]].compactMap { $0 } : []) {
                if let ip = IPAddress.parse(a), taken[ip] == nil { taken[ip] = vm.nameLabel }
            }
        }
        let name = ApplianceNaming.next(s.name, taken: names)
        var allocator = AddressAllocator(s, taken: taken)
        let ip: IPAddress?
        switch allocator.next(for: name) {
        case .staticAddress(let a): ip = a
        case .dhcp: ip = nil
        case .exhausted: return nil
        }
        // Reserved before the first await of the provisioning: a concurrent lease picks another.
        reservedNames.insert(name)
        if let ip { reservedAddresses[s.pool, default: [:]][ip] = name }
        defer {
            reservedNames.remove(name)
            if let ip { reservedAddresses[s.pool]?[ip] = nil }
        }
        let job = ApplianceProvision(appliancePool: s.name, name: name, template: s.template, templateUUID: template.uuid, srUUID: sr.uuid, srName: sr.nameLabel,
                                     network: s.network, memory: s.memory, address: s.address(ip))
        log("provisioning appliance \(name) of AppliancePool \(s.name) (\(ip.map { "static address \($0)" } ?? "DHCP")): no idle appliance to lease")
        return try await p.provision(job, now: now())
    }
}

extension ApplianceLeases {
    /// Leases recorded by processes that are gone: the appliances are idle again.
    static func clearStale(_ catalog: Catalog) throws {
        for l in try catalog.view().leases where isStale(holder: l.holder) {
            try catalog.release(pool: l.pool, uuid: l.uuid, holder: l.holder)
        }
    }

    /// A lease whose holder is a process of this machine that no longer exists.
    static func isStale(holder: String) -> Bool {
        guard holder.hasPrefix("pid "), let pid = Int32(holder.dropFirst(4)), pid != getpid() else { return false }
        return kill(pid, 0) != 0 && errno == ESRCH
    }
}
