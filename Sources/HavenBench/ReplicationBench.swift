import Foundation
import HavenData
import HavenSim
import XenAPI

/// Issue 9's replication figure: a 2% incremental sync (scattered 64 KiB writes) of a generated
/// disk (HAVEN_BENCH_GIB, default 4) to a replica on another SR, through the `haven` binary
/// against the simulator, against reading the same changed blocks over NBD (same nbdkit, TLS,
/// 4 connections) — the floor any sync has to pay.
///
/// The sync's time is its data path as the runner logs it (changed-block query, NBD read and,
/// beside it, the VHD delta upload, the simulator's writes), with the CPU seconds of the haven
/// process; the read's CPU seconds are this process's (the simulator in it is idle meanwhile): the simulator's `VM.snapshot` copies every allocated
/// byte of the disk (twice per sync: the source snapshot and the restore point), where xapi's is
/// a metadata operation, so the whole action's time is printed but not compared.
func benchReplication(sizeGiB: Int, havenPath: String) async throws -> [String: Double] {
    let dir = URL(fileURLWithPath: ".bench/replication").standardizedFileURL
    try? FileManager.default.removeItem(at: dir)
    try FileManager.default.createDirectory(at: dir.appendingPathComponent("config"), withIntermediateDirectories: true)
    let size = "\(sizeGiB)Gi"
    try """
        pools:
          - name: bench
            port: 4443
            credentials: {username: root, password: bench}
            hosts: [{name: h1, address: 127.9.10.1}]
            srs: [{name: Local storage, type: ext, size: 1Ti, default: true}, {name: Replica storage, type: ext, size: 1Ti}]
            networks: [{name: net0, purpose: [nbd]}]
            vms:
              - name: web
                networks: [net0]
                disks: [{name: web-root, size: \(size), fill: {seed: 9, unallocated: 0.3}}]
        """.write(to: dir.appendingPathComponent("world.yaml"), atomically: true, encoding: .utf8)
    print("\nreplication: generating a \(sizeGiB) GiB disk in the simulator …")
    let state = dir.appendingPathComponent("state")
    let sim = Simulator(world: try World.load(path: dir.appendingPathComponent("world.yaml").path), stateDirectory: state)
    let ep = try sim.start()[0]
    defer { sim.stop() }
    let config = dir.appendingPathComponent("config").path
    try """
        apiVersion: haven/v1
        kind: Pool
        metadata: {name: bench}
        spec:
          url: \(ep.masterURL)
          credentials: {username: root, passwordEnv: BENCH_PASSWORD}
          tls: {caFile: \(ep.caFile)}
        ---
        apiVersion: haven/v1
        kind: ReplicationPolicy
        metadata: {name: dr}
        spec:
          source: bench
          vms: {names: [web]}
          target: {pool: bench, sr: Replica storage}
          schedule: {every: 1h}
          keep: 1
        """.write(toFile: config + "/haven.yaml", atomically: true, encoding: .utf8)
    let t0 = Date()
    func haven(_ args: [String], now: Date) throws -> (Int32, String, String, Double) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: havenPath)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["BENCH_PASSWORD"] = "bench"
        env["HAVEN_NOW"] = ISO8601DateFormatter().string(from: now)
        env["HAVEN_STATE"] = dir.appendingPathComponent("haven-state").path
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        let start = DispatchTime.now().uptimeNanoseconds
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self),
                Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
    }
    let initial = try haven(["apply", "-f", config, "--auto-approve"], now: t0)
    guard initial.0 == 0 else { throw BenchError("initial sync failed: \(initial.1)\(initial.2)") }
    print("replication: initial sync \(String(format: "%.1f", initial.3)) s")

    // 2% of the 64 KiB blocks, scattered: the case where 2 MiB VHD blocks would carry 32× the bytes.
    let write = try haven(["sim", "write", "--state", state.path, "--vm", "web", "--percent", "2", "--seed", "17", "--output", "json"], now: t0)
    guard write.0 == 0, let obj = try JSONSerialization.jsonObject(with: Data(write.1.utf8)) as? [String: Any],
          let blocks = (obj["blocks"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.intValue }) else {
        throw BenchError("sim write failed: \(write.1)\(write.2)")
    }
    let inc = try haven(["apply", "-f", config, "--auto-approve"], now: t0.addingTimeInterval(3_700))
    guard inc.0 == 0 else { throw BenchError("incremental sync failed: \(inc.1)\(inc.2)") }
    var syncSeconds = 0.0
    var syncCPU = 0.0
    var listSeconds = 0.0
    var readDone = 0.0
    var sent = 0.0
    for line in inc.2.split(separator: "\n") {
        guard let e = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], let m = e["message"] as? String,
              m.contains("blocks of 64 KiB copied in") else { continue }
        let parts = m.components(separatedBy: " copied in ")
        syncSeconds += Double(parts[1].split(separator: " ").first ?? "") ?? 0
        func number(after key: String) -> Double {
            guard let r = m.range(of: key) else { return 0 }
            return Double(m[r.upperBound...].prefix { $0.isNumber || $0 == "." }) ?? 0
        }
        syncCPU += number(after: "CPU ")
        listSeconds += number(after: "changed blocks listed in ")
        readDone = max(readDone, number(after: "read done at "))
        sent += number(after: "VHD of ")
    }
    guard syncSeconds > 0 else { throw BenchError("the incremental logged no copy time: \(inc.2.suffix(2_000))") }

    // The floor: the same blocks read over NBD from the source disk, from connecting on.
    let client = XenAPIClient(url: ep.masterURL, credentials: .init(username: ep.username, password: ep.password), tls: .caFile(ep.caFile))
    try await client.login()
    let vm = try await client.records(VMRecord.self).first { $0.value.isRealVM && $0.value.nameLabel == "web" }!.value
    var vdi: VDIRef?
    for vbd in vm.vbds {
        let b = try await client.record(vbd)
        if b.type == "Disk" { vdi = b.vdi }
    }
    let info = try await client.nbdInfo(vdi!).first!
    let diskSize = try await client.record(vdi!).virtualSize
    let start = DispatchTime.now().uptimeNanoseconds
    let cpuStart = ownCPUSeconds()
    let source = try NBDDiskSource(NBDEndpoint(address: info.address, port: info.port, exportName: info.exportName, tls: .certificate(info.cert)),
                                   size: diskSize, connections: 4)
    let changed = ChangedBlocks(diskSize: diskSize, blocks: blocks.sorted())
    var byChunk: [Int: [ByteRange]] = [:]
    for r in changed.ranges(within: 2 << 20) { byChunk[Int(r.offset >> 21), default: []].append(r) }
    let pool = BufferPool(size: 2 << 20, limit: 64)
    try source.read(byChunk.keys.sorted().map { ReadJob(chunk: $0, ranges: byChunk[$0]!) }, buffers: pool) { _, b in pool.release(b) }
    let readSeconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    // This process also runs the simulator, idle during the read: its CPU is the reader's.
    let readCPU = ownCPUSeconds() - cpuStart

    // The same read from a snapshot of the disk taken just before, as the sync reads its source
    // snapshot: the simulator's snapshot is a copy of the disk, whose gigabytes are still being
    // written back while it is read (xapi's is a metadata operation). Shown, not the target's peer.
    let snap = try await client.snapshot(vdi!)
    let snapInfo = try await client.nbdInfo(snap).first!
    let snapStart = DispatchTime.now().uptimeNanoseconds
    let snapSource = try NBDDiskSource(NBDEndpoint(address: snapInfo.address, port: snapInfo.port, exportName: snapInfo.exportName,
                                                   tls: .certificate(snapInfo.cert)), size: diskSize, connections: 4)
    try snapSource.read(byChunk.keys.sorted().map { ReadJob(chunk: $0, ranges: byChunk[$0]!) }, buffers: pool) { _, b in pool.release(b) }
    let snapReadSeconds = Double(DispatchTime.now().uptimeNanoseconds - snapStart) / 1e9
    try? await client.destroy(snap)
    try? await client.logout()

    let changedBytes = Double(blocks.count) * 65_536
    let ratio = syncSeconds / readSeconds
    print("""

        | \(sizeGiB) GiB disk, 2% scattered (\(blocks.count) blocks of 64 KiB) | haven | peer | ratio | target |
        |---|---|---|---|---|
        | incremental sync data path vs reading the changed blocks over NBD | \(String(format: "%.2f", syncSeconds)) s | \(String(format: "%.2f", readSeconds)) s | \(String(format: "%.2f", ratio))× the time | ≤ 3× |
        | the same read from a disk snapshot taken just before it (as the sync reads; the simulator's snapshot copies the disk) | | \(String(format: "%.2f", snapReadSeconds)) s | \(String(format: "%.2f", syncSeconds / snapReadSeconds))× | |
        | … of which listing the changed blocks (CBT); the NBD read done at | \(String(format: "%.2f", listSeconds)) s; \(String(format: "%.2f", readDone)) s | | | |
        | CPU seconds of the process doing it (haven; the reader) | \(String(format: "%.2f", syncCPU)) s | \(String(format: "%.2f", readCPU)) s | \(String(format: "%.2f", syncCPU / max(readCPU, 0.001)))× | |
        | VHD delta sent vs bytes changed | \(String(format: "%.0f MiB", sent / 1_048_576)) | \(String(format: "%.0f MiB", changedBytes / 1_048_576)) | \(String(format: "%.2f", sent / changedBytes))× | |
        | whole incremental `haven apply` (the simulator's snapshots copy the disk) | \(String(format: "%.2f", inc.3)) s | | | |
        """)
    return [
        "replication_incremental_sync_seconds": syncSeconds, "replication_changed_read_seconds": readSeconds,
        "replication_incremental_sync_vs_nbd_read": ratio, "replication_delta_bytes_vs_changed": sent / changedBytes,
        "replication_incremental_apply_seconds": inc.3, "replication_incremental_sync_cpu_seconds": syncCPU,
        "replication_changed_read_cpu_seconds": readCPU, "replication_changed_read_fresh_snapshot_seconds": snapReadSeconds,
    ]
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

