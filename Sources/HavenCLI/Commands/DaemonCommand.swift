import ArgumentParser
import Foundation
import HavenDaemon
import HavenEngine
import Logging

struct DaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon", abstract: "Keep the pools matching the configuration, continuously.",
        discussion: """
            Reconciles every pool at start, then whenever a backup falls due (it sleeps until the earliest timer), the \
            configuration files change (checked every 2 s; --git-pull pulls them), or a pool reports changes to its VMs \
            or disks (event.from). A configuration with errors is logged (file:line:col) and ignored: the last good one \
            stays in force. Serves /healthz, /readyz, /metrics (Prometheus), /api/v1/status and a status page at /.

            One daemon acts per state directory: a second one waits as a standby (state/locks/daemon.lock) and takes \
            over when the first stops. SIGTERM or SIGINT: no new work; running transfers get --shutdown-grace to \
            finish, then stop at their next durable step (no half version, no orphan snapshot); exit 0.
            """)

    @Option(name: [.customShort("f"), .customLong("config")], help: "Configuration directory.")
    var config: String = "."

    @Option(name: .customLong("state"), help: "haven's state directory; default $HAVEN_STATE, /var/lib/haven for root, else ~/.local/state/haven.")
    var state: String?

    @Option(help: "HOST:PORT for the HTTP endpoint (port 0: any free port, printed on standard output).")
    var listen: String = "127.0.0.1:9810"

    @Option(name: .customLong("git-pull"), help: "Run `git pull --ff-only` in the configuration directory this often (e.g. 1m).")
    var gitPull: String?

    @Option(name: .customLong("shutdown-grace"), help: "How long running transfers may finish after SIGTERM before they are cancelled.")
    var shutdownGrace: String = "5m"

    @Option(name: .customLong("log-format"), help: "text or json (one object per line on standard error).")
    var logFormat: String = "text"

    func validate() throws {
        do {
            _ = try ListenAddress(parsing: listen)
            if let pull = try gitPull.map(parseDuration), pull < .seconds(1) {
                throw DaemonError(.usage, "--git-pull takes an interval of at least 1s, not '\(gitPull ?? "")'")
            }
            _ = try parseDuration(shutdownGrace)
        } catch let e as DaemonError {
            throw ValidationError(e.message)
        }
        guard LogFormat(rawValue: logFormat) != nil else { throw ValidationError("--log-format takes text or json") }
    }

    func run() async throws {
        var options = DaemonOptions(configDirectory: config, statePath: state ?? StateDirectory.defaultPath, listen: try ListenAddress(parsing: listen),
                                    gitPullInterval: try gitPull.map(parseDuration), shutdownGrace: try parseDuration(shutdownGrace))
        let env = ProcessInfo.processInfo.environment
        // Tests shorten the resync period; production keeps ten minutes.
        if let s = env["HAVEN_DAEMON_RESYNC"], let v = Double(s) { options.resyncInterval = .milliseconds(Int64(v * 1000)) }
        let json = LogFormat(rawValue: logFormat) == .json
        let level = env["HAVEN_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0.lowercased()) } ?? .info
        LoggingSystem.bootstrap { label in
            var h: any LogHandler = json ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "haven.daemon")
        let daemon = Daemon(options: options, logger: logger)
        Daemon.bootstrapMetrics(daemon.metrics)
        do {
            try await daemon.run()
        } catch {
            throw CLIError("daemon: \(error)")
        }
    }
}
