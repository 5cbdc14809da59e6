import Foundation
import HavenSpec

extension Planner.Context {
    /// Every AppliancePool on an observed pool: its template, SR and network checked (a missing
    /// one is a plan error naming it); as many appliances as the planned transfers through it
    /// need (at most `max`, at most the pool's `limits.transfers`), idle ones reused, the rest
    /// provisioned with the next free address; halted ones started; beyond `max`, or with an
    /// address the pool no longer allows, idle ones removed (never one in use). Appliances of
    /// AppliancePools no longer declared go too. Runs after backups and replication are planned.
    mutating func appliances() {
        for ap in desired.appliancePools.sorted(by: { $0.name < $1.name }) {
            guard let pool = observed[ap.spec.pool.value] else { continue }
            appliancePool(ap, pool)
        }
        if housekeeping {
            undeclaredAppliances()
            orphanAppliances()
        }
    }

    /// Copies left by runs that died while provisioning (after `VM.copy`, before the appliance was
    /// recorded): found by the exact name their recorded intent gave them, never by anything else,
    /// and removed with their disks. The planning view holds only intents of processes that are gone.
    mutating func orphanAppliances() {
        for (poolName, pool) in observed.sorted(by: { $0.key < $1.key }) {
            for i in catalog.intents where i.pool == poolName && i.isApplianceIntent {
                let candidates = pool.templates.filter { $0.key == i.name }.map(\.value)
                    + pool.appliances.filter { $0.name == i.name && ($0.owner.isEmpty || $0.owner == planner.instance) }.map(\.uuid)
                    + pool.vms.filter { $0.name == i.name }.map(\.uuid)
                let appliancePool = i.policy.hasPrefix("appliance:") ? String(i.policy.dropFirst("appliance:".count)) : i.policy
                for uuid in Set(candidates).sorted() {
                    add(PlannedAction(key: ActionKey(.removeAppliance, pool: poolName, subject: uuid),
                                      action: .removeAppliance(ApplianceTarget(appliancePool: appliancePool, uuid: uuid, name: i.name, intent: i.name)),
                                      reason: "left by a run that stopped while provisioning it (requested at \(Self.iso(i.requestedAt))); haven's by its recorded intent, so it and its disks are removed"))
                }
            }
        }
    }

    /// This haven's appliances on a pool: its mark on the VM and the VM in its inventory.
    func ownedAppliances(_ pool: ObservedPool) -> [ObservedAppliance] {
        let inventory = Set((inventoryByPool[pool.name] ?? []).filter { $0.cls == "VM" && $0.role == OwnershipMarks.applianceRole }.map(\.uuid))
        // A copy still named by its intent is not an appliance yet: orphanAppliances takes it.
        let copies = Set(catalog.intents.filter { $0.pool == pool.name && $0.isApplianceIntent }.map(\.name))
        return pool.appliances.filter { $0.owner == planner.instance && inventory.contains($0.uuid) && !copies.contains($0.name) }
            .sorted { Self.applianceOrder($0.name, $1.name) }
    }

    /// In use: a transfer holds its lease, or disks that are not its own are plugged into it.
    func inUse(_ a: ObservedAppliance, pool: String) -> Bool {
        !a.foreignDisks.isEmpty || catalog.leases.contains { $0.pool == pool && $0.uuid == a.uuid }
    }

    static func applianceOrder(_ a: String, _ b: String) -> Bool { ApplianceNaming.order(a, b) }

    /// Planned transfers whose data goes through an AppliancePool: backups of policies naming it
    /// in `appliances`, replications naming it as source or target appliances.
    func transfers(through ap: String) -> [ActionKey] {
        let backupPolicies = Set(desired.backupPolicies.filter { $0.spec.appliances?.value == ap }.map(\.name))
        let replicationPolicies = Set(desired.replicationPolicies.filter { $0.spec.appliances.source?.value == ap || $0.spec.appliances.target?.value == ap }
            .map(\.name))
        return actions.filter {
            ($0.kind == .backup && backupPolicies.contains($0.key.policy)) || ($0.kind == .replicate && replicationPolicies.contains($0.key.policy))
        }.map(\.key)
    }

    mutating func appliancePool(_ ap: AppliancePool, _ pool: ObservedPool) {
        let spec = ap.spec
        let settings = AppliancePoolSettings(ap)
        appliancePools[ap.name] = settings
        let resource = "AppliancePool/\(ap.name)"
        let templateUUID = pool.templates[spec.template]
        if templateUUID == nil {
            let guess = Self.closest(spec.template, Array(pool.templates.keys)).map { "; did you mean '\($0)'?" } ?? ""
            warn(.noApplianceTemplate, pool.name, "tpl-\(ap.name)", resource: resource,
                 "AppliancePool \(ap.name): pool \(pool.name) has no template named '\(spec.template)' (spec.template)\(guess)",
                 reason: "import the appliance template into the pool or correct spec.template; no appliance is provisioned until then")
        }
        let sr = pool.srs.values.first { $0.name == spec.sr }
        if sr == nil {
            let guess = Self.closest(spec.sr, pool.srs.values.map(\.name)).map { "; did you mean '\($0)'?" } ?? ""
            warn(.noApplianceSR, pool.name, "sr-\(ap.name)", resource: resource,
                 "AppliancePool \(ap.name): pool \(pool.name) has no SR named '\(spec.sr)' (spec.sr)\(guess)",
                 reason: "correct spec.sr; no appliance is provisioned until then")
        }
        if !pool.networks.contains(spec.network) {
            let guess = Self.closest(spec.network, pool.networks).map { "; did you mean '\($0)'?" } ?? ""
            warn(.noApplianceNetwork, pool.name, "net-\(ap.name)", resource: resource,
                 "AppliancePool \(ap.name): pool \(pool.name) has no network named '\(spec.network)' (spec.network)\(guess)",
                 reason: "correct spec.network; no appliance is provisioned until then")
        }
        let mine = ownedAppliances(pool).filter { $0.appliancePool == ap.name }
        var removed = Set<String>()
        func remove(_ a: ObservedAppliance, _ why: String) {
            removed.insert(a.uuid)
            add(PlannedAction(key: ActionKey(.removeAppliance, pool: pool.name, subject: a.uuid),
                              action: .removeAppliance(ApplianceTarget(appliancePool: ap.name, uuid: a.uuid, name: a.name)), reason: why))
        }
        if housekeeping {
            // An address the configuration no longer allows: the appliance is replaced once idle.
            let ranges = settings.ranges
            for a in mine where !inUse(a, pool: pool.name) {
                if let s = a.staticAddress {
                    if !(IPAddress.parse(s).map { ip in ranges.contains { $0.contains(ip) } } ?? false) {
                        remove(a, "its static address \(s) is no longer in spec.addresses of AppliancePool \(ap.name)")
                    }
                } else if !spec.dhcpFallback {
                    remove(a, "it takes its address from DHCP and spec.dhcpFallback of AppliancePool \(ap.name) is off")
                }
            }
            // Beyond max: idle ones go, halted before running, DHCP before static, newest first.
            let remaining = mine.filter { !removed.contains($0.uuid) }
            if remaining.count > spec.max {
                let excess = remaining.count - spec.max
                let idle = remaining.filter { !inUse($0, pool: pool.name) }.sorted { a, b in
                    let ka = (a.isRunning ? 1 : 0, a.staticAddress == nil ? 0 : 1)
                    let kb = (b.isRunning ? 1 : 0, b.staticAddress == nil ? 0 : 1)
                    return ka != kb ? ka < kb : Self.applianceOrder(b.name, a.name)
                }
                for a in idle.prefix(excess) {
                    remove(a, "AppliancePool \(ap.name) keeps at most \(spec.max) appliance\(spec.max == 1 ? "" : "s") (spec.max) and \(remaining.count) exist; this one is idle")
                }
                if idle.count < excess {
                    let busy = remaining.filter { inUse($0, pool: pool.name) }.map(\.name)
                    warn(.applianceInUse, pool.name, "busy-\(ap.name)", resource: resource,
                         "AppliancePool \(ap.name): \(excess - idle.count) appliance\(excess - idle.count == 1 ? "" : "s") beyond spec.max \(spec.max) \(excess - idle.count == 1 ? "is" : "are") in use (\(busy.joined(separator: ", ")))",
                         reason: "an appliance in use is never removed; the next run removes it once it is idle")
                }
            }
        }
        let kept = mine.filter { !removed.contains($0.uuid) }
        // A key of the daemon plans no appliance of its own: keys run at once, and two plans would
        // pick the same name and address. Its transfers lease (and, when needed, provision) them.
        if let keys = keyScope, !keys.housekeeping { return }
        var starts: [ActionKey] = []
        for a in kept where a.powerState.lowercased() == "halted" {
            let key = ActionKey(.startAppliance, pool: pool.name, subject: a.uuid)
            starts.append(key)
            add(PlannedAction(key: key, action: .startAppliance(ApplianceTarget(appliancePool: ap.name, uuid: a.uuid, name: a.name)),
                              reason: "idle appliances are kept running, ready for the next transfer"))
        }
        // How many the planned transfers need, and how many are there to lease.
        let transfers = transfers(through: ap.name)
        guard !transfers.isEmpty else { return }
        let limit = desired.pool(named: pool.name)?.spec.limits.transfers ?? 1
        let need = min(spec.max, limit, transfers.count)
        let idle = kept.filter { !inUse($0, pool: pool.name) }
        // Never beyond spec.max in all: appliances in use count too (their transfers may outlive this plan).
        let missing = min(need - idle.count, spec.max - kept.count)
        guard missing > 0 else { return }
        let planned = "\(transfers.count) planned transfer\(transfers.count == 1 ? "" : "s") through AppliancePool \(ap.name) need\(transfers.count == 1 ? "s" : "") \(need) appliance\(need == 1 ? "" : "s") at once (spec.max \(spec.max), limits.transfers \(limit)); \(idle.count) idle exist\(idle.count == 1 ? "s" : "")"
        guard let templateUUID, let sr, pool.networks.contains(spec.network) else { return }
        // Addresses held: the hosts' interfaces, every other VM's guest metrics, every appliance's (any AppliancePool, any haven).
        var taken: [IPAddress: String] = [:]
        for (text, vm) in pool.guestAddresses { if let ip = IPAddress.parse(text) { taken[ip] = "VM \(vm)" } }
        for (text, host) in pool.hostAddresses { if let ip = IPAddress.parse(text) { taken[ip] = host } }
        for a in pool.appliances {
            for text in a.addresses + [a.staticAddress].compactMap({ $0 }) { if let ip = IPAddress.parse(text) { taken[ip] = "appliance \(a.name)" } }
        }
        var allocator = AddressAllocator(settings, taken: taken)
        var names = Set(pool.appliances.map(\.name))
        var provisions: [ActionKey] = []
        var waiting = 0
        for n in 0..<missing where waiting == 0 {
            let name = ApplianceNaming.next(ap.name, taken: names)
            let ip: IPAddress?
            switch allocator.next(for: "appliance \(name)") {
            case .staticAddress(let a): ip = a
            case .dhcp: ip = nil
            case .exhausted:
                waiting = missing - n
                continue
            }
            names.insert(name)
            let key = ActionKey(.provisionAppliance, pool: pool.name, subject: name)
            provisions.append(key)
            let job = ApplianceProvision(appliancePool: ap.name, name: name, template: spec.template, templateUUID: templateUUID, srUUID: sr.uuid,
                                         srName: sr.name, network: spec.network, memory: settings.memory, address: settings.address(ip))
            let how = ip.map { "static address \($0), the first free one of spec.addresses" }
                ?? "DHCP: every static address of spec.addresses is taken and dhcpFallback is on"
            add(PlannedAction(key: key, action: .provisionAppliance(job), reason: "\(planned); provisioning \(missing); \(how)"))
        }
        if waiting > 0 {
            let holders = allocator.takenInList.prefix(6).map { "\($0.0) by \($0.1)" }.joined(separator: ", ")
            warn(.applianceAddressesExhausted, pool.name, "addr-\(ap.name)", resource: resource,
                 "AppliancePool \(ap.name): \(planned), but every static address is taken (\(holders)) and dhcpFallback is off: \(waiting) transfer\(waiting == 1 ? "" : "s") wait\(waiting == 1 ? "s" : "") for an appliance to be free",
                 reason: "add addresses to spec.addresses or set dhcpFallback: true")
        }
        // Transfers begin once the appliances are up (or failed to come up: a lease then waits or provisions).
        let before = provisions + starts
        if !before.isEmpty {
            let set = Set(transfers)
            actions = actions.map { a in
                guard set.contains(a.key) else { return a }
                var a = a
                a.after += before
                return a
            }
        }
    }

    /// Appliances of this haven whose AppliancePool is no longer declared on their pool.
    mutating func undeclaredAppliances() {
        let declared = Set(desired.appliancePools.map { "\($0.spec.pool.value)\u{0}\($0.name)" })
        for (poolName, pool) in observed.sorted(by: { $0.key < $1.key }) {
            for a in ownedAppliances(pool) where !declared.contains("\(poolName)\u{0}\(a.appliancePool)") {
                if inUse(a, pool: poolName) {
                    warn(.applianceInUse, poolName, "busy-\(a.uuid)", resource: "AppliancePool/\(a.appliancePool)",
                         "appliance \(a.name) of AppliancePool \(a.appliancePool), no longer declared, is in use",
                         reason: "an appliance in use is never removed; the next run removes it once it is idle")
                    continue
                }
                add(PlannedAction(key: ActionKey(.removeAppliance, pool: poolName, subject: a.uuid),
                                  action: .removeAppliance(ApplianceTarget(appliancePool: a.appliancePool, uuid: a.uuid, name: a.name)),
                                  reason: "AppliancePool \(a.appliancePool) is no longer declared on pool \(poolName)"))
            }
            // Recorded but gone from the pool (destroyed by hand, or a removal that stopped half-way): its leftovers go.
            let present = Set(pool.appliances.map(\.uuid))
            for r in catalog.appliances where r.pool == poolName && !present.contains(r.uuid) {
                add(PlannedAction(key: ActionKey(.removeAppliance, pool: poolName, subject: r.uuid),
                                  action: .removeAppliance(ApplianceTarget(appliancePool: r.appliancePool, uuid: r.uuid, name: r.name)),
                                  reason: "appliance \(r.name) is gone from pool \(poolName); what haven recorded of it (and any disk it left) is cleared"))
            }
        }
    }

    static func closest(_ word: String, _ candidates: [String]) -> String? { Suggestion.closest(to: word, in: candidates) }
}
