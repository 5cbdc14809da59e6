import Foundation
import Synchronization
import Testing

/// `haven mover` run as an appliance would run it, checked from outside with openssl.
@Suite struct MoverCommandTests {
    /// A /24 of the CLI scenarios' family (127.150-239), reserved like a Scenario's.
    static func prefix() -> String {
        let n = Scenario.counter.add(1, ordering: .relaxed).newValue
        return "127.\(150 + Int(getpid()) % 90).\(n)"
    }

    func shell(_ script: String) throws -> (status: Int32, output: String) { try runTool("sh", ["-c", script]) }

    @Test func aMoverServesTLSWithTheCertificateFromItsStateDirectory() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("haven-mover-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("devices"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // Credentials as a boot script would lay them out from xenstore_data, made by openssl here.
        let made = try runTool("openssl", [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=abd-cli",
            "-keyout", dir.appendingPathComponent("key").path, "-out", dir.appendingPathComponent("cert").path,
        ])
        #expect(made.status == 0)
        let key = (0..<32).map { _ in UInt8.random(in: 0...255) }
        try Data(key).base64EncodedString().write(to: dir.appendingPathComponent("token-key"), atomically: true, encoding: .utf8)
        try "abd-cli".write(to: dir.appendingPathComponent("name"), atomically: true, encoding: .utf8)
        let address = "\(Self.prefix()).50"
        let ready = dir.appendingPathComponent("ready").path
        let mover = Process()
        mover.executableURL = URL(fileURLWithPath: HavenBinary.path)
        mover.arguments = ["mover", "--listen", address, "--state", dir.path, "--ready-file", ready]
        let log = Pipe()
        mover.standardError = log
        try mover.run()
        for _ in 0..<400 where !FileManager.default.fileExists(atPath: ready) && mover.isRunning { usleep(25_000) }
        #expect(try String(contentsOfFile: ready, encoding: .utf8) == "\(address):2811\n")
        let served = try shell("openssl s_client -connect \(address):2811 </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256")
        let expected = try shell("openssl x509 -in \(dir.appendingPathComponent("cert").path) -noout -fingerprint -sha256")
        #expect(served.status == 0)
        #expect(served.output.contains("Fingerprint="))
        #expect(served.output == expected.output)
        mover.terminate()
        mover.waitUntilExit()
        #expect(mover.terminationStatus == 0)
        let said = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(said.contains("haven mover abd-cli listening on \(address):2811"))
        // Secrets stay out of what it prints.
        #expect(!said.contains(Data(key).base64EncodedString()))
        #expect(!said.contains("PRIVATE KEY"))
    }

    @Test func aMoverWithoutItsCredentialsSaysWhichKeyIsMissing() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("haven-mover-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let run = try HavenBinary.run(["mover", "--listen", "\(Self.prefix()).51", "--state", dir.path])
        #expect(run.status == 2)
        #expect(run.stderr.contains("vm-data/haven/cert is missing"))
        #expect(run.stderr.contains(dir.path))
    }

    @Test func aBadListenAddressIsAUsageError() throws {
        let run = try HavenBinary.run(["mover", "--listen", "127.0.0.1:99999", "--state", "/nonexistent"])
        #expect(run.status == 64)
        #expect(run.stderr.contains("not a port"))
    }
}
