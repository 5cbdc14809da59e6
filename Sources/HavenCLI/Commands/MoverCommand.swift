import ArgumentParser
import Foundation
import HavenMover

#if canImport(Glibc)
    import Glibc
#endif
import CHavenSystem

/// `haven mover`: the program inside a data-mover appliance. Wiring only: credentials from the
/// state directory, a `MoverServer`, signals.
struct MoverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mover",
        abstract: "Serve an appliance's attached disks to haven on port 2811 (runs inside a data-mover appliance).",
        discussion: """
            Reads its credentials from the state directory, one file per `vm-data/haven/` key of the appliance's \
            xenstore_data (cert, key, token-key, name), and serves the block devices found in the devices \
            directory (default STATE/devices) over TLS. Every connection must present a job token signed with \
            the appliance's token key. Runs until SIGTERM or SIGINT. See docs/mover-protocol.md.
            """)

    @Option(help: "Address to listen on, ADDR or ADDR:PORT (port 2811 by default).")
    var listen: String

    @Option(help: "State directory holding cert, key, token-key and name.")
    var state: String

    @Option(help: "Directory of the disks to serve (block devices or images named xvdb, xvdc, …).")
    var devices: String?

    @Option(name: .customLong("allow-inbound-from"), help: "Serve only connections from this source address (repeatable; default: any).")
    var allowInboundFrom: [String] = []

    @Option(help: "Write ADDR:PORT to this file once listening.")
    var readyFile: String?

    @Option(name: .customLong("change-report-fd"), help: .hidden)
    var changeReportFD: Int32?

    /// The simulator's pid: the mover ends with it (a real appliance has no parent to watch).
    @Option(name: .customLong("parent-pid"), help: .hidden)
    var parentPID: Int32?

    func validate() throws { _ = try Self.parseListen(listen) }

    func run() throws {
        if let parentPID, haven_exit_with_parent(parentPID) != 0 { throw CLIError("the parent process \(parentPID) is gone") }
        let (host, port) = try Self.parseListen(listen)
        let stateURL = URL(fileURLWithPath: state)
        let credentials = try MoverCredentials(directory: stateURL)
        var config = MoverServerConfiguration(
            credentials: credentials, host: host, port: port,
            devices: DeviceDirectory(path: devices ?? stateURL.appendingPathComponent("devices").path))
        if !allowInboundFrom.isEmpty { config.allowedSources = Set(allowInboundFrom) }
        if let changeReportFD { config.writeObserver = ChangeReportChannel(fd: changeReportFD) }
        config.softwareVersion = "haven \(HavenVersion.current)"
        config.log = { line in
            FileHandle.standardError.write(Data("\(ISO8601DateFormatter().string(from: Date())) \(line)\n".utf8))
        }
        let server = try MoverServer(config)
        try server.start()
        let inbound = allowInboundFrom.isEmpty ? "" : " (inbound only from \(allowInboundFrom.joined(separator: ", ")))"
        FileHandle.standardError.write(Data("haven mover \(credentials.name) listening on \(host):\(port)\(inbound), certificate \(credentials.pin)\n".utf8))
        if let readyFile { try "\(host):\(port)\n".write(toFile: readyFile, atomically: true, encoding: .utf8) }
        SignalWaiter.wait(for: [SIGTERM, SIGINT])
        server.stop()
    }

    static func parseListen(_ text: String) throws -> (String, Int) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count <= 2, !parts[0].isEmpty else { throw ValidationError("--listen must be ADDR or ADDR:PORT, not '\(text)'") }
        guard parts.count == 2 else { return (parts[0], MoverProtocol.defaultPort) }
        guard let port = Int(parts[1]), (1...65535).contains(port) else { throw ValidationError("--listen: '\(parts[1])' is not a port") }
        return (parts[0], port)
    }
}
