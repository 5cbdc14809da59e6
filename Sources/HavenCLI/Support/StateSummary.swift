import HavenSpec

/// The human summary `haven validate` prints for a valid configuration.
struct StateSummary {
    let state: DesiredState
    let root: String
    let files: Int

    var text: String {
        let n = state.resourceCount
        var lines = ["\(root): valid, \(n) resource\(n == 1 ? "" : "s") in \(files) file\(files == 1 ? "" : "s")"]
        func section<S>(_ title: String, _ items: [Resource<S>], _ describe: (Resource<S>) -> String) {
            guard !items.isEmpty else { return }
            lines.append("")
            lines.append("\(title) (\(items.count))")
            let width = max(12, items.map(\.name.count).max() ?? 0)
            for r in items {
                lines.append("  " + r.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + describe(r))
            }
        }
        section("Pools", state.pools) { p in
            var tls = "system CAs"
            if p.spec.tls.insecureSkipVerify { tls = "TLS NOT VERIFIED" }
            if p.spec.tls.fingerprint != nil { tls = "pinned fingerprint" }
            if p.spec.tls.caFile != nil { tls = "CA file" }
            let nbd = p.spec.nbd.network.map { "NBD via \($0)" } ?? "NBD on any NBD network"
            return "\(p.spec.url), \(tls); \(nbd), \(p.spec.nbd.connections) connections/disk; "
                + "at most \(p.spec.limits.snapshots) snapshots, \(p.spec.limits.transfers) transfers at once"
        }
        section("Repositories", state.repositories) { r in
            "\(r.spec.path) (\(r.spec.compression), chunks \(r.spec.chunkSize), "
                + (r.spec.encryption == nil ? "not encrypted" : "encrypted") + ")"
        }
        section("AppliancePools", state.appliancePools) { a in
            let addresses = a.spec.addresses.map { $0.value.description }.joined(separator: ", ")
            return "on \(a.spec.pool.value): up to \(a.spec.max) × \(a.spec.memory) from '\(a.spec.template)' on SR '\(a.spec.sr)', "
                + "network '\(a.spec.network)', addresses [\(addresses)]" + (a.spec.dhcpFallback ? " + DHCP" : "")
        }
        section("BackupPolicies", state.backupPolicies) { b in
            let s = b.spec
            var parts = ["\(s.pool.value) → \(s.repository.value)", "VMs: \(describe(s.vms))", describe(s.schedule)]
            parts.append("method \(s.method.rawValue)" + (s.cbt ? ", CBT" : ", no CBT"))
            parts.append(describe(s.retention))
            if !s.excludeDisks.isEmpty { parts.append("skips disks \(s.excludeDisks.map(\.value).joined(separator: ", "))") }
            if s.suspend { parts.append("SUSPENDED") }
            return parts.joined(separator: "; ")
        }
        section("ReplicationPolicies", state.replicationPolicies) { r in
            let s = r.spec
            var parts = ["\(s.source.value) → \(s.target.pool.value)" + (s.target.sr.map { " (SR \($0))" } ?? ""),
                         "VMs: \(describe(s.vms))", "\(s.direction.rawValue), \(s.method.rawValue)", describe(s.schedule),
                         "keep \(s.keep) restore point\(s.keep == 1 ? "" : "s")"]
            if s.singlePass != nil { parts.append("single pass") }
            if s.suspend { parts.append("SUSPENDED") }
            return parts.joined(separator: "; ")
        }
        return lines.joined(separator: "\n")
    }

    private func describe(_ v: VMSelector) -> String {
        var parts: [String] = []
        if v.all { parts.append("all") }
        if !v.names.isEmpty { parts.append(v.names.map(\.value).joined(separator: ", ")) }
        if !v.uuids.isEmpty { parts.append("\(v.uuids.count) by uuid") }
        if !v.tags.isEmpty { parts.append("tagged " + v.tags.map(\.value).joined(separator: ", ")) }
        if !v.exclude.isEmpty { parts.append("except " + v.exclude.map(\.value).joined(separator: ", ")) }
        return parts.joined(separator: "; ")
    }

    private func describe(_ s: Schedule) -> String {
        if let every = s.every { return "every \(every)" }
        if let cron = s.cron { return "cron '\(cron)' \(s.timezone)" }
        return "unscheduled"
    }

    private func describe(_ r: BackupPolicySpec.Retention) -> String {
        let parts = [("last", r.keepLast), ("hourly", r.hourly), ("daily", r.daily), ("weekly", r.weekly),
                     ("monthly", r.monthly), ("yearly", r.yearly)].filter { $0.1 > 0 }.map { "\($0.1) \($0.0)" }
        return "keep " + parts.joined(separator: ", ")
    }
}
