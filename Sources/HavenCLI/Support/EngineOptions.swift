import ArgumentParser
import Foundation
import HavenEngine
import HavenSpec

/// Options every command that acts on pools shares.
struct EngineOptions: ParsableArguments {
    @Option(name: [.customShort("f"), .customLong("config")], help: "Configuration directory.")
    var config: String = "."

    @Option(name: .customLong("state"), help: "haven's state directory (catalog, locks, instance id); default $HAVEN_STATE, /var/lib/haven for root, else ~/.local/state/haven.")
    var state: String?

    @Option(help: "Restrict to KIND/NAME: BackupPolicy/NAME or Pool/NAME.")
    var target: String?

    /// The configuration, or exit 2 with its errors.
    func loadDesired() -> DesiredState {
        let result = SpecLoader.load(path: config)
        for d in result.diagnostics { FileHandle.standardError.write(Data("\(d)\n".utf8)) }
        guard let state = result.state else { fail("\(config): the configuration has \(result.errors.count) error\(result.errors.count == 1 ? "" : "s"); nothing was done") }
        return state
    }

    func engine(_ desired: DesiredState) -> Engine {
        do {
            return try Engine(desired: desired, state: StateDirectory(path: state ?? StateDirectory.defaultPath))
        } catch {
            fail("\(error)")
        }
    }

    func scope(_ desired: DesiredState) -> TargetScope {
        do { return try TargetScope.parse(target, in: desired) } catch { fail("\(error)") }
    }
}

/// "Now", unless `HAVEN_NOW` (ISO 8601) says otherwise: the injectable clock of tests and demos.
func currentTime() -> Date {
    if let text = ProcessInfo.processInfo.environment["HAVEN_NOW"], let d = ISO8601DateFormatter().date(from: text) { return d }
    return Date()
}

var stdoutIsTTY: Bool { isatty(1) == 1 }
var stdinIsTTY: Bool { isatty(0) == 1 }
