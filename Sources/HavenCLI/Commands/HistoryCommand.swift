import ArgumentParser
import Foundation
import HavenCatalog
import HavenCore
import HavenEngine

/// `haven history`: every `apply` and `backup now` run the catalog recorded, and what each action did.
struct HistoryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "history", abstract: "List the apply and backup-now runs, newest first.",
        discussion: "Each run is recorded in the catalog: when, the command, its result, and per action succeeded, failed or skipped with why. `haven history show RUN` shows one.",
        subcommands: [HistoryListCommand.self, HistoryShowCommand.self], defaultSubcommand: HistoryListCommand.self)
}

/// Only the state directory: history needs no configuration and no pool.
struct StateOptions: ParsableArguments {
    @Option(name: [.customShort("f"), .customLong("config")], help: "Configuration directory (not read; accepted like every other command).")
    var config: String = "."

    @Option(name: .customLong("state"), help: "haven's state directory; default $HAVEN_STATE, /var/lib/haven for root, else ~/.local/state/haven.")
    var state: String?

    func catalog() throws -> Catalog { try StateDirectory(path: state ?? StateDirectory.defaultPath).catalog() }
}

struct HistoryListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List runs, newest first.")

    @OptionGroup var options: StateOptions

    @Option(help: "Only runs that acted on this VM (name or uuid).")
    var vm: String?

    @Option(help: "Only runs that acted for this BackupPolicy.")
    var policy: String?

    @Option(help: "Only runs started since: a time (2026-05-01T12:00:00Z, 2026-05-01) or an age (24h, 7d).")
    var since: String?

    @Option(help: "text or json.")
    var output: OutputFormat = .text

    func run() throws {
        let catalog = try options.catalog()
        let from = try since.map { try parseTimeArgument($0, option: "--since") }
        let runs = try catalog.runs(vm: vm, policy: policy, since: from)
        var rows: [[String: Any]] = []
        for r in runs {
            let actions = try catalog.runActions(r.id ?? 0).filter { a in (vm == nil || a.vm == vm || a.vmUUID == vm?.lowercased()) && (policy == nil || a.policy == policy) }
            var row: [String: Any] = ["id": r.id ?? 0, "startedAt": ISO8601DateFormatter().string(from: r.startedAt), "command": r.command,
                                      "result": r.result, "message": r.message,
                                      "succeeded": actions.filter { $0.result == "succeeded" }.count,
                                      "failed": actions.filter { $0.result == "failed" }.count,
                                      "skipped": actions.filter { $0.result == "skipped" }.count,
                                      "backups": actions.compactMap(\.backupID)]
            if let end = r.endedAt { row["endedAt"] = ISO8601DateFormatter().string(from: end) }
            rows.append(row)
        }
        if output == .json {
            print(try jsonText(["formatVersion": 1, "runs": rows] as [String: Any]))
            return
        }
        if rows.isEmpty {
            print("no runs recorded")
            return
        }
        print(pad("RUN", 6) + pad("STARTED (UTC)", 21) + pad("RESULT", 11) + pad("DONE", 6) + pad("FAILED", 8) + pad("SKIPPED", 9) + "COMMAND")
        for (r, row) in zip(runs, rows) {
            print(pad(String(r.id ?? 0), 6) + pad(utcMinuteFormatter.string(from: r.startedAt), 21) + pad(r.result, 11)
                  + pad("\(row["succeeded"]!)", 6) + pad("\(row["failed"]!)", 8) + pad("\(row["skipped"]!)", 9) + r.command)
        }
    }
}

struct HistoryShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one run: every action, its result and why.")

    @OptionGroup var options: StateOptions

    @Argument(help: "The run id (see `haven history`).")
    var runID: Int64

    @Option(help: "text or json.")
    var output: OutputFormat = .text

    func run() throws {
        let catalog = try options.catalog()
        let run = runID
        guard let r = try catalog.run(run) else { throw CLIError("no run \(run) is recorded (see `haven history`)", code: .notFound) }
        let actions = try catalog.runActions(run)
        if output == .json {
            struct Out: Encodable {
                var formatVersion = 1
                var run: RunRecord
                var actions: [RunActionRecord]
            }
            print(try jsonText(encodable: Out(run: r, actions: actions)))
            return
        }
        print("Run \(run): \(r.command)")
        print("  started  \(utcMinuteFormatter.string(from: r.startedAt)) UTC")
        print("  ended    " + (r.endedAt.map { utcMinuteFormatter.string(from: $0) + " UTC" } ?? "never (the process stopped before it finished)"))
        print("  result   \(r.result)" + (r.message.isEmpty ? "" : ": \(r.message)"))
        if actions.isEmpty { print("  no action ran") }
        for a in actions {
            let mark = a.result == "succeeded" ? "✔" : a.result == "failed" ? "✘" : "-"
            print("  \(mark) \(a.result) \(a.kind) \(a.vm.map { "VM \($0)" } ?? "pool \(a.pool)")" + (a.policy.map { " (\($0))" } ?? ""))
            print("      \(a.message)")
            if let id = a.backupID {
                print("      backup \(id)" + (a.bytesRead.map { ", read \(humanBytes($0))" } ?? "") + (a.bytesStored.map { ", stored \(humanBytes($0))" } ?? ""))
            }
        }
    }
}

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan", abstract: "Work with saved plans.", subcommands: [PlanShowCommand.self])
}

/// `terraform show PLAN`: what a plan saved by `haven diff --out` would do, without a pool.
struct PlanShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Render a plan saved by `haven diff --out`.",
        discussion: "Reads only the file: nothing is observed, nothing checked for staleness (`haven apply PLAN` does that).")

    @Argument(help: "The plan file.")
    var plan: String

    @Option(help: "text or json (the format of `haven diff --output json`).")
    var output: OutputFormat = .text

    func run() throws {
        let p: HavenCore.Plan
        do { p = try PlanRenderer.load(plan) } catch { throw CLIError("cannot read the plan \(plan): \(ExitMapping.describe(error))", code: .io) }
        switch output {
        case .json: print(try PlanRenderer.json(p))
        case .text:
            let f = ISO8601DateFormatter()
            print("Plan made \(f.string(from: p.generatedAt)) for pools \(p.scope.pools.joined(separator: ", "))"
                  + (p.scope.policies.map { ", policies \($0.joined(separator: ", "))" } ?? "") + "; fingerprint \(p.fingerprint.prefix(12))")
            print("")
            print(PlanRenderer.text(p, color: useColor))
        }
    }
}
