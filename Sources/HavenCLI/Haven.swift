import ArgumentParser

import Foundation

@main
struct Haven: AsyncParsableCommand {
    /// Parses, runs, and maps whatever comes out through `ExitMapping` (never the parser's 1).
    static func main() async {
        if let message = unknownSubcommand(Array(CommandLine.arguments.dropFirst())) {
            FileHandle.standardError.write(Data("Error: \(message)\n".utf8))
            Foundation.exit(ExitCode.validationFailure.rawValue)
        }
        let command: any ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            exit(withError: error)
        }
        do {
            var c = command
            if var a = c as? any AsyncParsableCommand { try await a.run() } else { try c.run() }
        } catch {
            // Help and usage errors the parser raises late (`help validate`, `validate --help`) keep its codes.
            let parserCode = exitCode(for: error)
            if error is CleanExit || parserCode == .success || parserCode == .validationFailure { exit(withError: error) }
            ExitMapping.report(error)
            Foundation.exit(ExitMapping.exitStatus(for: error))
        }
    }

    /// A mistyped command word (`haven aply`, `haven backups lst`) gets a did-you-mean; the
    /// parser would only say "unexpected argument". Commands taking a positional argument of
    /// their own are left to the parser.
    static func unknownSubcommand(_ args: [String]) -> String? {
        var command: any ParsableCommand.Type = Haven.self
        var path = ["haven"]
        for word in args {
            let subs = command.configuration.subcommands
            guard !word.hasPrefix("-"), !subs.isEmpty, command.configuration.defaultSubcommand == nil else { return nil }
            let names = subs.map { $0._commandName } + (path.count == 1 ? ["help"] : [])
            guard let next = subs.first(where: { $0._commandName == word }) else {
                if names.contains(word) { return nil }
                return "'\(word)' is not a command of \(path.joined(separator: " "))" + didYouMean(word, names)
                    + "\nUsage: \(path.joined(separator: " ")) <\(names.joined(separator: "|"))>; see `\(path.joined(separator: " ")) --help`"
            }
            command = next
            path.append(word)
        }
        return nil
    }

    static let configuration = CommandConfiguration(
        commandName: "haven",
        abstract: "Declarative backup and disaster recovery for XenServer / XCP-ng pools.",
        discussion: """
            Keep the protection of your pools as YAML in Git (apiVersion haven/v1: Pool, Repository, \
            AppliancePool, BackupPolicy, ReplicationPolicy). haven checks it, shows what would change, \
            and makes the pools match.

            Exit codes: 0 success (for diff: in sync), 1 changes pending (diff), 2 error or invalid \
            configuration; argument errors keep the parser's own code (64).
            """,
        version: HavenVersion.current,
        subcommands: [ValidateCommand.self, DiffCommand.self, ApplyCommand.self, BackupCommand.self, FailoverCommand.self, FailbackCommand.self, ReplicasCommand.self, AppliancesCommand.self, StatusCommand.self, SuspendCommand.self, ResumeCommand.self, BackupsCommand.self, HistoryCommand.self, PlanCommand.self, RestoreCommand.self, RepoCommand.self, CatalogCommand.self, SchemaCommand.self, SimCommand.self, DaemonCommand.self, MoverCommand.self]
    )
}

enum HavenVersion {
    static let current = "0.1.0-dev"
}
