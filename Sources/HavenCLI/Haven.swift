import ArgumentParser

import Foundation

@main
struct Haven: AsyncParsableCommand {
    /// Parses, runs, and maps whatever comes out through `ExitMapping` (never the parser's 1).
    static func main() async {
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
        subcommands: [ValidateCommand.self, DiffCommand.self, ApplyCommand.self, FailoverCommand.self, StatusCommand.self, BackupsCommand.self, RestoreCommand.self, RepoCommand.self, CatalogCommand.self, SchemaCommand.self, SimCommand.self]
    )
}

enum HavenVersion {
    static let current = "0.1.0-dev"
}
