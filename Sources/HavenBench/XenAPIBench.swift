import Foundation
import HavenSim
import XenAPI

#if canImport(Glibc)
    import Glibc
#endif

func peakRSSMiB() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_maxrss) / 1024
}

/// User plus system CPU seconds of a `rusage` (this process's, or a child's from wait4).
func cpuSeconds(_ usage: rusage) -> Double {
    Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

/// User and system CPU seconds of this process so far.
func ownCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return cpuSeconds(usage)
}

func currentRSSMiB() -> Double {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let pages = Double(text.split(separator: " ").dropFirst().first.flatMap { Double($0) } ?? 0)
    return pages * Double(sysconf(Int32(_SC_PAGESIZE))) / 1_048_576
}

/// get_all_records of a 10,000-VM pool served by the simulator: bytes on the wire and the
/// client's decode time (bytes -> values -> typed records) for XML-RPC and JSON-RPC.
func benchXenAPI() async throws -> [String: Double] {
    let dir = URL(fileURLWithPath: ".bench/xenapi-10k")
    try? FileManager.default.removeItem(at: dir)
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    var yaml = """
        pools:
          - name: big
            port: 4443
            credentials: {username: root, password: bench}
            hosts: [{name: big1, address: 127.9.9.1}]
            srs: [{name: SR, type: ext, size: 100Ti}]
            vms:

        """
    for i in 0..<10_000 { yaml += "      - {name: vm-\(i), tags: [t\(i % 7)]}\n" }
    try yaml.write(to: dir.appendingPathComponent("world.yaml"), atomically: true, encoding: .utf8)
    let sim = Simulator(world: try World.load(path: dir.appendingPathComponent("world.yaml").path), stateDirectory: dir.appendingPathComponent("state"))
    let endpoints = try sim.start()
    defer { sim.stop() }
    let ep = endpoints[0]
    let client = XenAPIClient(url: ep.masterURL, credentials: .init(username: ep.username, password: ep.password),
                              tls: .caFile(ep.caFile))
    try await client.login()
    let session = try await client.sessionReference()
    let http = HTTPClient(tls: .caFile(ep.caFile))
    var results: [String: Double] = [:]
    print("")
    print("| get_all_records, 10,000 VMs | reply size | parse | typed records | RSS growth |")
    print("|---|---|---|---|---|")
    for wire in [WireProtocol.xmlrpc, .jsonrpc] {
        let body = wire == .xmlrpc
            ? XMLRPC.request(method: "VM.get_all_records", params: [.string(session)])
            : JSONRPC.request(method: "VM.get_all_records", params: [.string(session)], id: 1)
        let url = ep.masterURL + (wire == .xmlrpc ? "/" : "/jsonrpc")
        let (_, reply) = try http.fetch(HTTPRequest(method: .post, url: url, timeout: 300), body: .bytes(body))
        var parseTimes: [Double] = []
        var typedTimes: [Double] = []
        var growth = 0.0
        for _ in 0..<3 {
            let before = currentRSSMiB()
            var value: XenValue = .null
            parseTimes.append(time {
                value = (try? (wire == .xmlrpc ? XMLRPC.parseResponse(reply) : JSONRPC.parseResponse(reply)).get()) ?? .null
            })
            var count = 0
            typedTimes.append(time {
                for (_, fields) in value.structValue ?? [:] where VMRecord(fields.structValue ?? [:]).isRealVM { count += 1 }
            })
            precondition(count == 10_000, "expected 10,000 VMs, decoded \(count)")
            growth = max(growth, currentRSSMiB() - before)
        }
        let mb = Double(reply.count) / 1_048_576
        print("| \(wire.rawValue) | \(String(format: "%.1f", mb)) MiB | \(String(format: "%.0f", median(parseTimes))) ms | \(String(format: "%.0f", median(typedTimes))) ms | \(String(format: "%.0f", growth)) MiB |")
        results["xenapi_10k_vms_\(wire.rawValue)_decode_ms"] = median(parseTimes) + median(typedTimes)
        results["xenapi_10k_vms_\(wire.rawValue)_reply_mib"] = mb
    }
    return results
}
