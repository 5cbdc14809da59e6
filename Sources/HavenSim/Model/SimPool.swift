import CSSL
import Foundation
import Synchronization
import XenAPI

#if canImport(Glibc)
    import Glibc
#endif

/// One host of a simulated pool: its address, certificate and servers.
final class SimHost: @unchecked Sendable {
    // @unchecked: `server` and `nbd` are set once while the pool starts, before any request.
    let index: Int
    let name: String
    let address: String
    let ref: String
    let certificate: String
    let key: String
    let fingerprint: String
    var server: HTTPServer?
    var nbd: NBDServer?

    init(index: Int, name: String, address: String, ref: String, certificate: String, key: String, fingerprint: String) {
        self.index = index
        self.name = name
        self.address = address
        self.ref = ref
        self.certificate = certificate
        self.key = key
        self.fingerprint = fingerprint
    }

    var pemCertificate: String { (try? String(contentsOfFile: certificate, encoding: .utf8)) ?? "" }
}

/// One simulated pool: a xapi database, its hosts' HTTP(S) servers, disks and NBD servers.
public final class SimPool: @unchecked Sendable {
    // @unchecked: the database is guarded by its own lock; the host list and configuration are
    // fixed after `start()`; fault rules live in the database's lock domain (`faults`).
    let spec: World.PoolSpec
    let directory: URL
    let db: Database
    let disks: DiskStore
    let username: String
    let password: String
    let apiMajor: Int64
    let apiMinor: Int64
    let useTLS: Bool
    let port: Int
    var hosts: [SimHost] = []
    /// Guarded by `db.lock`.
    var faults: [FaultRule] = []
    var nbdPluginPath = ""
    /// Every nbdkit start and restart runs on this thread.
    let nbdSupervisor = NBDSupervisor()
    var controlToken = ""
    /// Running appliances' guests, by VM ref. Guarded by `db.lock`.
    var appliances: [String: ApplianceGuest] = [:]
    private var flusher: Thread?
    /// Held by a flush from taking its copy until db.json is renamed into place.
    private let flushing = Mutex<Void>(())
    private var stopping = false
    /// XenAPI calls served, of any method (the fleet benchmark counts calls per VM).
    public let callsServed = Atomic<Int>(0)

    public var name: String { spec.name }

    init(spec: World.PoolSpec, directory: URL) throws {
        self.spec = spec
        self.directory = directory
        username = spec.credentials?.username ?? "root"
        password = spec.credentials?.password ?? "password"
        let version = (spec.apiVersion ?? "2.21").split(separator: ".").compactMap { Int64($0) }
        apiMajor = version.first ?? 2
        apiMinor = version.count > 1 ? version[1] : 21
        useTLS = spec.tls ?? true
        port = spec.port ?? (useTLS ? 443 : 80)
        guard !spec.hosts.isEmpty else { throw SimError("pool \(spec.name) declares no hosts") }
        for h in spec.hosts where !h.address.hasPrefix("127.") {
            throw SimError("pool \(spec.name): host address \(h.address) is not on loopback (127.0.0.0/8)")
        }
        let fm = FileManager.default
        try fm.createDirectory(at: directory.appendingPathComponent("disks"), withIntermediateDirectories: true)
        try fm.createDirectory(at: directory.appendingPathComponent("pki"), withIntermediateDirectories: true)
        disks = DiskStore(directory: directory.appendingPathComponent("disks"))
        let dbFile = directory.appendingPathComponent("db.json")
        if let data = try? Data(contentsOf: dbFile) {
            db = Database(snapshot: try JSONDecoder().decode(DatabaseSnapshot.self, from: data))
        } else {
            db = Database()
        }
        if let data = try? Data(contentsOf: directory.appendingPathComponent("faults.json")),
            let saved = try? JSONDecoder().decode([FaultRule].self, from: data)
        {
            faults = saved
        } else {
            faults = try (spec.faults ?? []).map(FaultRule.parse)
        }
    }

    var hasCBTAPI: Bool { (apiMajor, apiMinor) >= (2, 8) }
    var snapshotHasIgnoreVDIs: Bool { (apiMajor, apiMinor) >= (2, 16) }

    /// The master's host, as the database says (failover moves it).
    var masterRef: String {
        db.withLock { db.refs("pool").first.flatMap { db.field($0, "master")?.stringValue } ?? hosts[0].ref }
    }

    func host(ref: String) -> SimHost? { hosts.first { $0.ref == ref } }

    // MARK: start and stop

    func start() throws {
        try makeCertificates()
        if db.objects.isEmpty {
            try bootstrap()
        }
        dropLeakedNBDAttachments()
        for host in hosts {
            let tls = useTLS ? try TLSServerContext(certificate: host.certificate, key: host.key) : nil
            let server = HTTPServer(address: host.address, port: port, tls: tls) { [weak self, host] req, res in
                self?.handle(req, res, host: host)
            }
            try server.start()
            host.server = server
        }
        try nbdSupervisor.run { [self] in try reconfigureNBD() }
        startRunningAppliances()
        flusher = Thread { [weak self] in self?.flushLoop() }
        flusher?.start()
    }

    /// No NBD connection outlives the simulator, yet a kill -9 leaves its dom0 VBDs in the saved
    /// state, and the VDI then stays in use (VDI_IN_USE) for good. Like xapi-nbd, which records its
    /// VBDs and removes leaked ones when it starts, drop them at start.
    func dropLeakedNBDAttachments() {
        db.withLock {
            for vbd in db.find("VBD") { $0["other_config"]?.stringMap["xapi-nbd"] == "true" } { nbdCloseLocked(vbd: vbd) }
        }
    }

    func stop() {
        db.withLock { stopping = true }
        for h in hosts {
            h.server?.stop()
            h.nbd?.stop()
        }
        stopAppliances()
        nbdSupervisor.stop()
        flush()
    }

    /// Writes the database after changes, at most every 0.2 s, and never spending more than about
    /// a fifth of the time encoding: with thousands of objects one encoding takes a while, and a
    /// flush after every change made a large pool's reconcile quadratic.
    private func flushLoop() {
        var pause = 0.2
        while true {
            Thread.sleep(forTimeInterval: pause)
            if db.withLock({ stopping }) { return }
            let start = DispatchTime.now().uptimeNanoseconds
            flush()
            pause = max(0.2, 4 * Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
    }

    /// Writes the database when it changed (atomically: temporary file, then rename). Only the
    /// copy is taken under the lock (the collections are copy-on-write); encoding and writing run
    /// outside it, so calls are not held up by the size of the pool. `flushing` is held from the
    /// copy to the rename: a flush that finds the database clean while another is still encoding
    /// (stop() racing the loop) waits for that write, so stop() returns only once the last state is
    /// on disk, and no older copy can be written over a newer one.
    func flush(encode: (DatabaseSnapshot) throws -> Data = { try JSONEncoder().encode($0) }) {
        flushing.withLock { _ in
            let state: DatabaseSnapshot? = db.withLock {
                guard db.dirty else { return nil }
                db.markClean()
                return db.snapshot()
            }
            guard let state else { return }
            do {
                try encode(state).write(to: directory.appendingPathComponent("db.json"), options: .atomic)
            } catch {
                // Not written: the next flush tries again.
                db.withLock { db.markDirty() }
            }
        }
    }

    func saveFaults() {
        let data = db.withLock { try? JSONEncoder().encode(faults) }
        try? data?.write(to: directory.appendingPathComponent("faults.json"), options: .atomic)
    }

    // MARK: certificates

    private func makeCertificates() throws {
        let pki = directory.appendingPathComponent("pki")
        let hostRefs: [String] = db.withLock { db.refs("host") }
        for (i, h) in spec.hosts.enumerated() {
            let name = h.name ?? "\(spec.name)-host\(i + 1)"
            let cert = pki.appendingPathComponent("\(h.address).pem").path
            let key = pki.appendingPathComponent("\(h.address).key").path
            if !FileManager.default.fileExists(atPath: cert) {
                try runOpenSSL([
                    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "3650", "-subj", "/CN=\(name)",
                    "-addext", "subjectAltName=IP:\(h.address),DNS:\(name)",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                ])
            }
            var digest = [UInt8](repeating: 0, count: 32)
            guard haven_cert_sha256(cert, &digest) == 0 else { throw SimError("cannot read certificate \(cert)") }
            let fp = digest.map { String(format: "%02X", $0) }.joined(separator: ":")
            let ref = i < hostRefs.count ? hostRefs[i] : Database.newRef()
            hosts.append(SimHost(index: i, name: name, address: h.address, ref: ref, certificate: cert, key: key, fingerprint: fp))
        }
        // One file trusting every host of the pool, for clients that follow the master around.
        let bundle = hosts.map(\.pemCertificate).joined()
        try bundle.write(to: pki.appendingPathComponent("pool-bundle.pem"), atomically: true, encoding: .utf8)
        // Matching host objects to world hosts by address keeps refs stable across restarts.
        db.withLock {
            for h in hosts {
                if let existing = db.find("host", where: { $0["address"]?.stringValue == h.address }).first, existing != h.ref {
                    if let i = hosts.firstIndex(where: { $0 === h }) {
                        hosts[i] = SimHost(
                            index: h.index, name: h.name, address: h.address, ref: existing, certificate: h.certificate,
                            key: h.key, fingerprint: h.fingerprint)
                    }
                }
            }
        }
    }

    private func runOpenSSL(_ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        let err = Pipe()
        p.standardError = err
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw SimError("openssl \(args.first ?? "") failed: \(text)")
        }
    }

    var caBundle: String { directory.appendingPathComponent("pki/pool-bundle.pem").path }

    /// `https://127.0.1.1:4443`
    func url(of host: SimHost) -> String { "\(useTLS ? "https" : "http")://\(host.address):\(port)" }
}
