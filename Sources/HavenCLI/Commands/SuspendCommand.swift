import ArgumentParser
import Foundation
import HavenCatalog
import HavenCore
import HavenEngine
import HavenSpec

/// `haven suspend POLICY` / `haven resume POLICY`: an overlay in the catalog over the YAML's
/// `suspend:`. `apply` honours it at once; a running daemon picks it up within seconds (it reads
/// the catalog's suspensions as it polls its configuration), with no restart.
struct SuspendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "suspend", abstract: "Stop planning a policy's backups or syncs until `haven resume`, without editing the YAML.",
        discussion: """
            Recorded in the catalog of the state directory: `haven apply`, `haven diff` and a running `haven daemon` \
            (within seconds, no restart) treat the policy as `suspend: true`; its VMs stay protected from clean-up \
            (their anchors and CBT are kept). A backup already running finishes. `haven status` shows it as suspended.
            """)

    @OptionGroup var options: SuspensionOptions

    func run() async throws {
        let (name, catalog) = try options.resolve()
        let who = "\(ProcessInfo.processInfo.environment["USER"] ?? "uid \(getuid())")@\(ProcessInfo.processInfo.hostName)"
        if try catalog.suspend(Suspension(policy: name, at: currentTime(), by: who)) {
            print("suspended \(name): nothing is planned for it until `haven resume \(name)` (a running daemon stops within seconds)")
        } else {
            print("\(name) was already suspended by `haven suspend`")
        }
    }
}

struct ResumeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resume", abstract: "Undo `haven suspend POLICY`: the policy is planned again (a running daemon resumes within seconds).")

    @OptionGroup var options: SuspensionOptions

    func run() async throws {
        let (name, catalog) = try options.resolve()
        let resumed = try catalog.resume(policy: name)
        let desired = try loadDesiredState(options.config)
        let inYAML = desired.backupPolicies.first { $0.name == name && $0.spec.suspend }.map(\.source)
            ?? desired.replicationPolicies.first { $0.name == name && $0.spec.suspend }.map(\.source)
        if resumed {
            print("resumed \(name)")
        } else {
            print("\(name) was not suspended by `haven suspend`")
        }
        if let inYAML {
            FileHandle.standardError.write(Data("haven: \(name) stays suspended: its YAML says `suspend: true` (\(inYAML)); remove it there\n".utf8))
        }
    }
}

struct SuspensionOptions: ParsableArguments {
    @Option(name: [.customShort("f"), .customLong("config")], help: "Configuration directory (the policy must be declared there).")
    var config: String = "."

    @Option(name: .customLong("state"), help: "haven's state directory; default $HAVEN_STATE, /var/lib/haven for root, else ~/.local/state/haven.")
    var state: String?

    @Argument(help: "The BackupPolicy or ReplicationPolicy.")
    var policy: String

    /// The policy, checked against the configuration (did-you-mean on a typo), and the catalog.
    func resolve() throws -> (String, Catalog) {
        let desired = try loadDesiredState(config)
        let names = desired.backupPolicies.map(\.name) + desired.replicationPolicies.map(\.name)
        guard names.contains(policy) else {
            throw CLIError("no BackupPolicy or ReplicationPolicy '\(policy)' is declared in \(config)" + didYouMean(policy, names), code: .notFound)
        }
        let state = try StateDirectory(path: state ?? StateDirectory.defaultPath)
        return (policy, try state.catalog())
    }
}
