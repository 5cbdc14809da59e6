import ArgumentParser
import Foundation
import HavenEngine
import HavenSpec
import Logging

/// Options every command that acts on pools shares.
struct EngineOptions: ParsableArguments {
    @Option(name: [.customShort("f"), .customLong("config")], help: "Configuration directory.")
    var config: String = "."

    @Option(name: .customLong("state"), help: "haven's state directory (catalog, locks, instance id); default $HAVEN_STATE, /var/lib/haven for root, else ~/.local/state/haven.")
    var state: String?

    @Option(help: "Restrict to KIND/NAME: BackupPolicy/NAME or Pool/NAME.")
    var target: String?

    /// The configuration, or its errors (exit 2).
    func loadDesired() throws -> DesiredState { try loadDesiredState(config) }

    func engine(_ desired: DesiredState) throws -> Engine {
        try Engine(desired: desired, state: StateDirectory(path: state ?? StateDirectory.defaultPath), logger: havenLogger())
    }

    func scope(_ desired: DesiredState) throws -> TargetScope { try TargetScope.parse(target, in: desired) }
}

/// The configuration in `config`, or its errors (exit 2); diagnostics on standard error.
func loadDesiredState(_ config: String) throws -> DesiredState {
    let result = SpecLoader.load(path: config)
    for d in result.diagnostics { FileHandle.standardError.write(Data("\(d)\n".utf8)) }
    guard let state = result.state else {
        throw CLIError("\(config): the configuration has \(result.errors.count) error\(result.errors.count == 1 ? "" : "s"); nothing was done", code: .config)
    }
    return state
}

/// swift-log to standard error; quiet (warnings) unless `HAVEN_LOG_LEVEL` says otherwise.
func havenLogger() -> Logger {
    var logger = Logger(label: "haven") { StreamLogHandler.standardError(label: $0) }
    let level = ProcessInfo.processInfo.environment["HAVEN_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0.lowercased()) }
    logger.logLevel = level ?? .warning
    return logger
}

/// "Now", unless `HAVEN_NOW` (ISO 8601) says otherwise: the injectable clock of tests and demos.
func currentTime() -> Date {
    if let text = ProcessInfo.processInfo.environment["HAVEN_NOW"], let d = ISO8601DateFormatter().date(from: text) { return d }
    return Date()
}

var stdoutIsTTY: Bool { isatty(1) == 1 }
var stdinIsTTY: Bool { isatty(0) == 1 }

/// A terminal that can redraw a status line: not when TERM is dumb (no cursor control).
var stderrIsInteractive: Bool { isatty(2) == 1 && ProcessInfo.processInfo.environment["TERM"] != "dumb" }
