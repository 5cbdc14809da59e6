import Foundation
import HavenSpec

func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }

func time(_ body: () -> Void) -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
}

/// 10 pools, 5 repositories, 20 appliance pools and `policies` backup policies, as one YAML file
/// per policy in a directory, the way a large Git repository of desired state looks.
func writeConfig(policies: Int, to dir: URL) throws {
    let fm = FileManager.default
    try? fm.removeItem(at: dir)
    try fm.createDirectory(at: dir.appendingPathComponent("policies"), withIntermediateDirectories: true)
    var base = ""
    for p in 0..<10 {
        base += """
            apiVersion: haven/v1
            kind: Pool
            metadata: {name: pool-\(p)}
            spec:
              url: https://xcp-\(p).example.net
              credentials: {usernameEnv: XCP_USER, passwordFile: /etc/haven/pool-\(p).pw}
              tls: {caFile: /etc/haven/pool-\(p).pem}
              limits: {snapshots: 4, transfers: 8}
            ---
            apiVersion: haven/v1
            kind: AppliancePool
            metadata: {name: abd-\(p)}
            spec:
              pool: pool-\(p)
              template: haven-abd
              sr: SAN
              network: backup
              addresses: [10.\(p).0.10-10.\(p).0.200, 10.\(p).1.0/24]
              netmask: 255.255.0.0
              gateway: 10.\(p).0.1
              max: 16

            ---

            """
    }
    for r in 0..<5 {
        base += "apiVersion: haven/v1\nkind: Repository\nmetadata: {name: repo-\(r)}\nspec: {path: /srv/haven/\(r), compression: \"zstd:3\"}\n---\n"
    }
    try base.write(to: dir.appendingPathComponent("base.yaml"), atomically: true, encoding: .utf8)
    for i in 0..<policies {
        let text = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata:
              name: policy-\(i)
              labels: {team: team-\(i % 17)}
            spec:
              pool: pool-\(i % 10)
              vms:
                names: [vm-\(i)-a, vm-\(i)-b]
                tags: [tier-\(i % 3)]
              schedule:
                cron: "\(i % 60) \(i % 24) * * *"
                timezone: Europe/Berlin
              cbt: true
              method: auto
              hooks:
                preSnapshot: {command: [/usr/bin/true], timeout: 30s}
              repository: repo-\(i % 5)
              retention: {keepLast: 3, daily: 7, weekly: 4, monthly: 6}
              appliances: abd-\(i % 10)

            """
        try text.write(to: dir.appendingPathComponent("policies/policy-\(i).yaml"), atomically: true, encoding: .utf8)
    }
}

func benchSpec() throws -> [String: Double] {
    let dir = URL(fileURLWithPath: ".bench/spec-1000")
    try writeConfig(policies: 1000, to: dir)
    var coldest = 0.0
    var runs: [Double] = []
    for i in 0..<7 {
        var result: LoadResult?
        let ms = time { result = SpecLoader.load(path: dir.path) }
        precondition(result?.isValid == true, "benchmark config must be valid: \(result?.errors.prefix(3) ?? [])")
        precondition(result?.state?.backupPolicies.count == 1000)
        if i == 0 { coldest = ms } else { runs.append(ms) }
    }
    let med = median(runs)
    print("")
    print("| spec | value |")
    print("|---|---|")
    print("| load + validate 1,000 BackupPolicy files (+10 pools, 10 appliance pools, 5 repos), median of 6 | \(String(format: "%.1f", med)) ms |")
    print("| same, first run | \(String(format: "%.1f", coldest)) ms |")
    return ["spec_load_1000_policies_ms": med]
}

func mergeResults(_ new: [String: Double]) throws {
    let url = URL(fileURLWithPath: "bench-results.json")
    var all: [String: Double] = [:]
    if let data = try? Data(contentsOf: url), let old = try? JSONDecoder().decode([String: Double].self, from: data) {
        all = old
    }
    all.merge(new) { _, b in b }
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try encoder.encode(all).write(to: url)
    print("\nwrote bench-results.json (\(all.count) keys)")
}

