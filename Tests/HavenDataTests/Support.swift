import DiskFormats
import Foundation
import Synchronization

@testable import HavenData

/// A scratch directory removed at the end of a test.
final class Scratch: @unchecked Sendable {
    // @unchecked: immutable.
    let url: URL
    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("haven-data-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: url) }
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
}

/// Deterministic test images: holes, random data, repeated blocks, zero-filled regions.
struct ImageMaker {
    private var rng: SplitMix64

    init(state: UInt64) { rng = SplitMix64(state: state) }

    mutating func next() -> UInt64 { rng.next() }

    mutating func block(_ kind: UInt64) -> [UInt8] {
        switch kind % 4 {
        case 0: return (0..<(65_536 / 8)).flatMap { _ in withUnsafeBytes(of: next()) { Array($0) } }
        case 1: return Array(String(repeating: "the quick brown fox \(kind) ", count: 4000).utf8.prefix(65_536))
        case 2: return [UInt8](repeating: UInt8(kind & 0xff) | 1, count: 65_536)
        default: return [UInt8](repeating: 0, count: 65_536)  // written zeros: allocated but empty
        }
    }

    /// Writes an image of `blocks` 64 KiB blocks; about a third is never written (holes).
    mutating func image(at path: String, blocks: Int) throws {
        FileManager.default.createFile(atPath: path, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? h.close() }
        try h.truncate(atOffset: UInt64(blocks) * 65_536)
        var duplicate: [UInt8] = block(next())
        for b in 0..<blocks {
            let roll = next() % 10
            if roll < 3 { continue }
            let data = roll == 9 ? duplicate : block(next())
            if roll == 8 { duplicate = data }
            try h.seek(toOffset: UInt64(b) * 65_536)
            try h.write(contentsOf: data)
        }
    }

    /// Rewrites `count` blocks (clustered in runs) and returns which.
    mutating func change(_ path: String, blocks total: Int, count: Int) throws -> [Int] {
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? h.close() }
        var chosen = Set<Int>()
        while chosen.count < count {
            let start = Int(next() % UInt64(total))
            for b in start..<min(total, start + 1 + Int(next() % 6)) where chosen.count < count { chosen.insert(b) }
        }
        for b in chosen {
            try h.seek(toOffset: UInt64(b) * 65_536)
            try h.write(contentsOf: block(next() | 0))
        }
        return chosen.sorted()
    }
}

/// nbdkit serving an image file read-only over TLS on a loopback address of its own.
final class NBDKit: @unchecked Sendable {
    // @unchecked: immutable after init.
    static let counter = Atomic<Int>(0)
    let process = Process()
    let address: String
    let certificate: String

    init(file: String, scratch: Scratch, writable: Bool = false, tls: Bool = true) throws {
        let n = Self.counter.add(1, ordering: .relaxed).newValue
        address = "127.\(60 + Int(getpid()) % 40).\(n % 250).1"
        let certDir = scratch.url.appendingPathComponent("pki-\(n)")
        try FileManager.default.createDirectory(at: certDir, withIntermediateDirectories: true)
        certificate = certDir.appendingPathComponent("ca-cert.pem").path
        let key = certDir.appendingPathComponent("server-key.pem").path
        let (rc, out) = try run("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                            "-keyout", key, "-out", certificate, "-days", "2", "-subj", "/CN=test",
                                            "-addext", "subjectAltName=IP:\(address)", "-addext", "basicConstraints=critical,CA:TRUE"])
        guard rc == 0 else { throw DataError(.io, "openssl", out) }
        try FileManager.default.copyItem(atPath: certificate, toPath: certDir.appendingPathComponent("server-cert.pem").path)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        var args = ["nbdkit", "--foreground", "--exit-with-parent", "-i", address, "-p", "10809"]
        args += tls ? ["--tls=require", "--tls-certificates=\(certDir.path)"] : ["--tls=off"]
        if !writable { args.append("-r") }
        args += ["file", file]
        process.arguments = args
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Ready when it accepts connections.
        for _ in 0..<200 {
            if (try? run("nbdinfo", ["--size", tls ? "nbds://\(address)?tls-certificates=\(certDir.path)" : "nbd://\(address)"]).0) == 0 { break }
            usleep(25_000)
        }
    }

    var endpoint: NBDEndpoint {
        NBDEndpoint(address: address, port: 10809, exportName: "",
                    tls: .certificate((try? String(contentsOfFile: certificate, encoding: .utf8)) ?? ""))
    }

    deinit {
        // SIGKILL: nbdkit started from a Swift thread inherits a mask that blocks SIGTERM.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

@discardableResult
func run(_ tool: String, _ args: [String], environment: [String: String] = [:]) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = [tool] + args
    var env = ProcessInfo.processInfo.environment
    env.merge(environment) { _, b in b }
    p.environment = env
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

func sha256(_ path: String) throws -> String {
    let (rc, out) = try run("sha256sum", [path])
    precondition(rc == 0)
    return String(out.prefix(64))
}

/// A small tmpfs mounted for one test (a repository on a file system that fills up). Needs root;
/// `available` says whether this process may mount one.
final class TmpFS: @unchecked Sendable {
    // @unchecked: immutable after init.
    let path: String
    /// Kept so the scratch directory holding the mount point outlives the mount.
    let scratch: Scratch

    static let available: Bool = {
        guard getuid() == 0 else { return false }
        let probe = FileManager.default.temporaryDirectory.appendingPathComponent("haven-tmpfs-probe-\(getpid())").path
        try? FileManager.default.createDirectory(atPath: probe, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: probe) }
        guard (try? run("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", probe]))?.0 == 0 else { return false }
        _ = try? run("umount", [probe])
        return true
    }()

    init(in scratch: Scratch, name: String, bytes: Int) throws {
        self.scratch = scratch
        path = scratch.path(name)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let (rc, out) = try run("mount", ["-t", "tmpfs", "-o", "size=\(bytes)", "tmpfs", path])
        guard rc == 0 else { throw DataError(.io, path, "cannot mount a tmpfs: \(out)") }
    }

    deinit { _ = try? run("umount", ["-l", path]) }
}

/// An image of incompressible bytes (no zero blocks, no repeats): every chunk is stored.
func randomImage(at path: String, bytes: Int, seed: UInt64) throws {
    var rng = SplitMix64(state: seed)
    var data = [UInt8](repeating: 0, count: bytes)
    data.withUnsafeMutableBytes { raw in
        let words = raw.bindMemory(to: UInt64.self)
        for i in words.indices { words[i] = rng.next() }
    }
    try Data(data).write(to: URL(fileURLWithPath: path))
}
