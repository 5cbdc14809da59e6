import Foundation
import Synchronization
import HavenCatalog

#if canImport(Glibc)
    import Glibc
#endif

/// haven's own state on this machine: its instance id (the owner mark it writes on pool objects),
/// the catalog, and the per-pool locks that keep two haven processes from acting on one pool.
public struct StateDirectory: Sendable {
    public let url: URL

    public init(path: String) throws {
        url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.appendingPathComponent("locks"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: url.appendingPathComponent("tmp"), withIntermediateDirectories: true)
        // Only haven's user reads its state: the catalog names every VM, the locks who holds them.
        for dir in [url, url.appendingPathComponent("locks"), url.appendingPathComponent("tmp")] { chmod(dir.path, 0o700) }
    }

    /// `$HAVEN_STATE`, else `/var/lib/haven` for root, else `$XDG_STATE_HOME/haven` (~/.local/state/haven).
    public static var defaultPath: String {
        let env = ProcessInfo.processInfo.environment
        if let s = env["HAVEN_STATE"], !s.isEmpty { return s }
        if getuid() == 0 { return "/var/lib/haven" }
        let base = env["XDG_STATE_HOME"] ?? (NSHomeDirectory() + "/.local/state")
        return base + "/haven"
    }

    /// A stable id for this haven installation, created on first use.
    public func instanceID() throws -> String {
        let file = url.appendingPathComponent("instance-id")
        if let text = try? String(contentsOf: file, encoding: .utf8) {
            let id = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if !id.isEmpty { return id }
        }
        let id = "haven-" + UUID().uuidString.lowercased().prefix(13)
        try (id + "\n").write(to: file, atomically: true, encoding: .utf8)
        chmod(file.path, 0o600)
        return String(id)
    }

    public func catalog() throws -> Catalog {
        let path = url.appendingPathComponent("catalog.sqlite").path
        let catalog = try Catalog(path: path)
        for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) { chmod(path + suffix, 0o600) }
        return catalog
    }

    public var scratch: URL { url.appendingPathComponent("tmp") }

    /// The token key of one appliance: `appliances/POOL/UUID.key`, 0600 in a 0700 directory.
    /// Never in the catalog, a log or a plan.
    public func applianceKeyFile(pool: String, uuid: String) -> URL {
        url.appendingPathComponent("appliances").appendingPathComponent(pool).appendingPathComponent("\(uuid).key")
    }

    public func writeApplianceKey(_ key: [UInt8], pool: String, uuid: String) throws {
        let file = applianceKeyFile(pool: pool, uuid: uuid)
        let dir = file.deletingLastPathComponent()
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for d in [dir.deletingLastPathComponent(), dir] { chmod(d.path, 0o700) }
        // Created 0600 before a byte is written: the key is never readable by others, not even briefly.
        let tmp = dir.appendingPathComponent(".\(uuid).key.tmp").path
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw EngineError(.action, file.path, "cannot create \(tmp): \(String(cString: strerror(errno)))") }
        let written = key.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        fsync(fd)
        close(fd)
        guard written == key.count, rename(tmp, file.path) == 0 else {
            unlink(tmp)
            throw EngineError(.action, file.path, "cannot write \(file.path)")
        }
    }

    /// nil when the file is missing (an appliance provisioned by another state directory).
    public func readApplianceKey(pool: String, uuid: String) -> [UInt8]? {
        (try? Data(contentsOf: applianceKeyFile(pool: pool, uuid: uuid))).map { [UInt8]($0) }
    }

    public func removeApplianceKey(pool: String, uuid: String) {
        try? FileManager.default.removeItem(at: applianceKeyFile(pool: pool, uuid: uuid))
    }

    /// Takes the pool's lock if it is free, and keeps it until `release` (the daemon holds a
    /// pool's lock while any of its workers acts on the pool). Fails naming the holder otherwise.
    public func tryPoolLock(_ pool: String) throws -> PoolLock {
        let path = url.appendingPathComponent("locks/\(pool).lock").path
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw EngineError(.lock, pool, "cannot open \(path)") }
        fchmod(fd, 0o600)
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
            throw EngineError(.lock, pool, "another haven (\(holder)) is acting on pool \(pool)")
        }
        ftruncate(fd, 0)
        let me = "pid \(getpid()), haven \(CommandLine.arguments.dropFirst().first ?? "")\n"
        _ = me.withCString { write(fd, $0, strlen($0)) }
        return PoolLock(fd: fd)
    }

    /// Holds the pool's lock for the duration of `body`; waits up to `timeout` seconds (nil:
    /// forever), then fails naming the holder.
    public func withPoolLock<T>(_ pool: String, timeout: Double?, _ body: () async throws -> T) async throws -> T {
        let path = url.appendingPathComponent("locks/\(pool).lock").path
        let fd = open(path, O_RDWR | O_CREAT, 0o600)
        guard fd >= 0 else { throw EngineError(.lock, pool, "cannot open \(path)") }
        fchmod(fd, 0o600)
        defer { close(fd) }
        let deadline = timeout.map { Date().addingTimeInterval($0) }
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if let deadline, Date() >= deadline {
                let holder = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
                throw EngineError(.lock, pool, "another haven (\(holder)) is acting on pool \(pool); gave up after \(Int(timeout ?? 0))s (--lock-timeout)")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        ftruncate(fd, 0)
        // Names the command too, so the one who waits reads "pid 123, haven daemon" (or apply).
        let me = "pid \(getpid()), haven \(CommandLine.arguments.dropFirst().first ?? "")\n"
        _ = me.withCString { write(fd, $0, strlen($0)) }
        defer { flock(fd, LOCK_UN) }
        return try await body()
    }
}

/// A pool's lock taken by `tryPoolLock`: closing the descriptor releases it (so does the
/// kernel when the process dies).
public final class PoolLock: Sendable {
    let fd: Int32
    private let released = Atomic<Bool>(false)

    init(fd: Int32) { self.fd = fd }

    public func release() {
        // Once: a second close(2) could close a descriptor number reused by another file.
        guard !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
        flock(fd, LOCK_UN)
        close(fd)
    }
}

/// An error of the engine: a code and what it concerns.
public struct EngineError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable { case lock, credentials, connect, observe, action, stale, notFound, restore }
    public var code: Code
    public var subject: String
    public var message: String

    public init(_ code: Code, _ subject: String, _ message: String) {
        self.code = code
        self.subject = subject
        self.message = message
    }

    public var description: String { message }
}
