import Foundation

/// Checks that need more than one document: unique names, references, overlapping addresses,
/// replication targets and policies that contradict each other.
struct CrossValidator {
    let state: DesiredState
    let sink: DiagnosticSink

    func run() {
        uniqueNames(state.pools)
        uniqueNames(state.repositories)
        uniqueNames(state.appliancePools)
        uniqueNames(state.backupPolicies)
        uniqueNames(state.replicationPolicies)
        uniquePoolURLs()
        references()
        overlappingAddresses()
        replications()
        conflictingBackupPolicies()
    }

    private func uniqueNames<S: ResourceSpec>(_ resources: [Resource<S>]) {
        var first: [String: SourceLocation] = [:]
        for r in resources where !r.name.isEmpty {
            if let earlier = first[r.name] {
                sink.error(
                    .duplicateName, at: r.nameLocation,
                    "duplicate \(S.kind.rawValue) '\(r.name)'; the first is declared at \(earlier)")
            } else {
                first[r.name] = r.nameLocation
            }
        }
    }

    private func uniquePoolURLs() {
        var seen: [String: Pool] = [:]
        for p in state.pools {
            guard let url = URL(string: p.spec.url), let host = url.host?.lowercased() else { continue }
            let key = "\(host):\(url.port ?? (url.scheme == "http" ? 80 : 443))"
            if let other = seen[key] {
                sink.error(
                    .duplicateName, at: p.nameLocation,
                    "Pool '\(p.name)' has the same address as Pool '\(other.name)' (\(other.nameLocation)); one pool must be declared once")
            } else {
                seen[key] = p
            }
        }
    }

    private func check(_ ref: Located<String>?, kind: ResourceKind, in owner: String, field: String, names: [String]) {
        guard let ref, !ref.value.isEmpty, !names.contains(ref.value) else { return }
        var message = "\(owner): '\(field)' refers to \(kind.rawValue) '\(ref.value)', which is not declared"
        if let guess = Suggestion.closest(to: ref.value, in: names) {
            message += "; did you mean '\(guess)'?"
        } else if names.isEmpty {
            message += " (no \(kind.rawValue) is declared)"
        } else {
            message += " (declared: \(names.joined(separator: ", ")))"
        }
        sink.error(.undeclaredReference, at: ref.location, message)
    }

    private func references() {
        let pools = state.pools.map(\.name)
        let repos = state.repositories.map(\.name)
        let appliancePools = state.appliancePools.map(\.name)
        for a in state.appliancePools {
            check(a.spec.pool, kind: .pool, in: "AppliancePool '\(a.name)'", field: "spec.pool", names: pools)
        }
        for b in state.backupPolicies {
            let owner = "BackupPolicy '\(b.name)'"
            check(b.spec.pool, kind: .pool, in: owner, field: "spec.pool", names: pools)
            check(b.spec.repository, kind: .repository, in: owner, field: "spec.repository", names: repos)
            check(b.spec.appliances, kind: .appliancePool, in: owner, field: "spec.appliances", names: appliancePools)
            if let ref = b.spec.appliances, let ap = state.appliancePool(named: ref.value),
                ap.spec.pool.value != b.spec.pool.value
            {
                sink.error(
                    .undeclaredReference, at: ref.location,
                    "\(owner): AppliancePool '\(ap.name)' runs on Pool '\(ap.spec.pool.value)', not on the policy's Pool '\(b.spec.pool.value)'")
            }
        }
        for r in state.replicationPolicies {
            let owner = "ReplicationPolicy '\(r.name)'"
            check(r.spec.source, kind: .pool, in: owner, field: "spec.source", names: pools)
            check(r.spec.target.pool, kind: .pool, in: owner, field: "spec.target.pool", names: pools)
            check(r.spec.singlePass?.repository, kind: .repository, in: owner, field: "spec.singlePass.repository", names: repos)
            check(r.spec.appliances.source, kind: .appliancePool, in: owner, field: "spec.appliances.source", names: appliancePools)
            check(r.spec.appliances.target, kind: .appliancePool, in: owner, field: "spec.appliances.target", names: appliancePools)
            for (side, ref, pool) in [("source", r.spec.appliances.source, r.spec.source.value),
                                      ("target", r.spec.appliances.target, r.spec.target.pool.value)]
            {
                if let ref, let ap = state.appliancePool(named: ref.value), ap.spec.pool.value != pool {
                    sink.error(
                        .undeclaredReference, at: ref.location,
                        "\(owner): 'spec.appliances.\(side)' names AppliancePool '\(ap.name)' on Pool '\(ap.spec.pool.value)', but the \(side) pool is '\(pool)'")
                }
            }
        }
    }

    private func overlappingAddresses() {
        var byPool: [String: [(AppliancePool, Located<AddressRange>)]] = [:]
        for a in state.appliancePools {
            for range in a.spec.addresses {
                byPool[a.spec.pool.value, default: []].append((a, range))
            }
        }
        for (pool, entries) in byPool {
            for (i, (owner, range)) in entries.enumerated() {
                guard let (other, otherRange) = entries[..<i].first(where: { $0.0.name != owner.name && $0.1.value.overlaps(range.value) })
                else { continue }
                sink.error(
                    .overlappingAddresses, at: range.location,
                    "address range \(range.value) of AppliancePool '\(owner.name)' overlaps \(otherRange.value) of AppliancePool '\(other.name)' (\(otherRange.location)) on Pool '\(pool)'")
            }
        }
    }

    private func replications() {
        for r in state.replicationPolicies {
            let owner = "ReplicationPolicy '\(r.name)'"
            let s = r.spec
            if !s.source.value.isEmpty, s.source.value == s.target.pool.value, s.target.sr == nil {
                sink.error(
                    .replicationOntoItself, at: s.target.pool.location,
                    "\(owner) replicates Pool '\(s.source.value)' onto itself without 'spec.target.sr'; the replicas would land on the source VMs' own storage. Name a different SR or another pool")
            }
            if s.method == .abd {
                // The source side reads the snapshot's disks, the target side writes the replica's: both, whatever the direction.
                let missing = [("source", s.appliances.source), ("target", s.appliances.target)].filter { $0.1 == nil }.map { "'spec.appliances.\($0.0)'" }
                if !missing.isEmpty {
                    sink.error(
                        .missingField, at: s.methodLocation,
                        "\(owner): 'method: abd' with 'direction: \(s.direction.rawValue)' needs \(missing.joined(separator: " and ")) (an appliance on each side moves the blocks)")
                }
            }
        }
        // One VM replicated twice to the same pool would fight over one replica.
        var claimed: [String: (ReplicationPolicy, Located<String>)] = [:]
        for r in state.replicationPolicies where !r.spec.suspend {
            for vm in r.spec.vms.names + r.spec.vms.uuids {
                let key = "\(r.spec.source.value)\u{0}\(r.spec.target.pool.value)\u{0}\(vm.value.lowercased())"
                if let (other, first) = claimed[key] {
                    sink.error(
                        .conflictingPolicies, at: vm.location,
                        "VM '\(vm.value)' is replicated to Pool '\(r.spec.target.pool.value)' by both ReplicationPolicy '\(other.name)' (\(first.location)) and '\(r.name)'")
                } else {
                    claimed[key] = (r, vm)
                }
            }
        }
    }

    /// CBT is a property of the disk: two policies cannot want it both on and off.
    private func conflictingBackupPolicies() {
        var claimed: [String: (BackupPolicy, Located<String>)] = [:]
        for b in state.backupPolicies where !b.spec.suspend {
            for vm in b.spec.vms.names + b.spec.vms.uuids {
                let key = "\(b.spec.pool.value)\u{0}\(vm.value.lowercased())"
                if let (other, first) = claimed[key] {
                    if other.spec.cbt != b.spec.cbt {
                        sink.error(
                            .conflictingPolicies, at: vm.location,
                            "VM '\(vm.value)' is selected by BackupPolicy '\(other.name)' (\(first.location)) with cbt: \(other.spec.cbt) and by '\(b.name)' with cbt: \(b.spec.cbt); CBT is one setting per disk")
                    }
                } else {
                    claimed[key] = (b, vm)
                }
            }
        }
    }
}
