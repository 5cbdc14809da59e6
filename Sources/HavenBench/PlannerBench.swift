import Foundation
import HavenCore
import HavenSpec

/// The planner on a synthetic 10,000-VM / 40,000-VDI pool with a year of catalog history for a
/// tenth of them: time and memory of one plan.
func benchPlanner() throws -> [String: Double] {
    var vdis: [String: ObservedVDI] = [:]
    var vms: [ObservedVM] = []
    for i in 0..<10_000 {
        var disks: [ObservedDisk] = []
        for d in 0..<4 {
            let uuid = "vdi-\(i)-\(d)"
            vdis[uuid] = ObservedVDI(uuid: uuid, name: "vm\(i)-disk\(d)", srUUID: "sr\(i % 8)", size: 20 << 30, type: "user", cbtEnabled: i % 3 != 0,
                                     isSnapshot: false, snapshotOf: "", otherConfig: [:])
            disks.append(ObservedDisk(userdevice: String(d), device: "xvd\(d)", vdiUUID: uuid))
        }
        vms.append(ObservedVM(uuid: "vm-\(i)", name: "vm\(i)", powerState: "Running", tags: ["tier\(i % 4)"], disks: disks))
    }
    var srs: [String: ObservedSR] = [:]
    for s in 0..<8 { srs["sr\(s)"] = ObservedSR(uuid: "sr\(s)", name: "SR\(s)", type: "ext", physicalSize: 1 << 44, physicalUtilisation: 1 << 40, supportsCBT: true) }
    let pool = ObservedPool(name: "big", apiMajor: 2, apiMinor: 21, cbtLicensed: true, vms: vms, snapshots: [], vdis: vdis, srs: srs, nbdNetworks: ["backup"])
    let now = Date()
    var catalog = CatalogView()
    for i in stride(from: 0, to: 10_000, by: 10) {
        for day in 0..<30 {
            catalog.backups.append(BackupRecord(id: "b-\(i)-\(day)", repository: "r", pool: "big", policy: "p\(i % 4)", vmUUID: "vm-\(i)", vmName: "vm\(i)",
                                                createdAt: now.addingTimeInterval(-Double(day) * 86_400 - 3_600), kind: "incremental", size: 0, storedBytes: 0))
        }
    }
    var text = """
        apiVersion: haven/v1
        kind: Pool
        metadata: {name: big}
        spec: {url: "https://xcp.example.com", credentials: {username: root, passwordEnv: PW}}
        ---
        apiVersion: haven/v1
        kind: Repository
        metadata: {name: r}
        spec: {path: /srv/r}

        """
    for t in 0..<4 {
        text += """
            ---
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: p\(t)}
            spec: {pool: big, vms: {tags: [tier\(t)]}, repository: r, retention: {keepLast: 7, daily: 14}}

            """
    }
    guard let desired = SpecLoader.load(sources: [.init(path: "bench.yaml", text: text)]).state else { fatalError("bench config invalid") }
    let before = currentRSSMiB()
    var plan: Plan?
    var times: [Double] = []
    for _ in 0..<3 {
        times.append(time { plan = Planner(instance: "bench").plan(desired: desired, observed: ["big": pool], catalog: catalog, now: now) })
    }
    let rss = peakRSSMiB()
    let ms = median(times)
    print("")
    print("| planner, 10,000 VMs / 40,000 VDIs, 30,000 catalog entries | value | target |")
    print("|---|---|---|")
    print("| one plan (median of 3) | \(String(format: "%.0f", ms)) ms | < 1,000 ms |")
    print("| peak RSS of the whole benchmark process so far | \(String(format: "%.0f", rss)) MiB (inputs took \(String(format: "%.0f", rss - before)) MiB more during planning) | < 300 MiB |")
    print("| actions planned | \(plan?.actions.count ?? 0) | |")
    return ["planner_10k_vms_ms": ms, "planner_peak_rss_mib": rss]
}
