import ArgumentParser
import Foundation
import HavenSpec

struct ValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check a configuration directory without touching any pool.",
        discussion: """
            Reads every *.yaml and *.yml file below DIRECTORY (recursively, several documents per file; hidden \
            entries and paths listed in DIRECTORY/.havenignore are skipped) and reports every problem at once as \
            FILE:LINE:COL: error: MESSAGE on standard error.

            Exit status: 0 when the configuration is valid (warnings allowed), 2 when it is not.
            With --output json, standard output carries the errors, or the normalized desired state \
            with every default filled in.
            """
    )

    @Argument(help: "Configuration directory or single YAML file (or give it with -f, like every other command).")
    var positional: String?

    @Option(name: [.customShort("f"), .customLong("config")], help: "Configuration directory or single YAML file.")
    var config: String?

    var directory: String { config ?? positional ?? "." }

    func validate() throws {
        if let config, let positional, config != positional {
            throw ValidationError("give the configuration once: -f \(config) or \(positional)")
        }
    }

    @Option(name: .long, help: "text (a summary) or json (machine-readable).")
    var output: OutputFormat = .text

    func run() throws {
        let result = SpecLoader.load(path: directory)
        switch output {
        case .json:
            print(try ValidationReport(result: result).jsonText())
        case .text:
            for d in result.diagnostics { FileHandle.standardError.write(Data("\(d)\n".utf8)) }
            if let state = result.state {
                print(StateSummary(state: state, root: directory, files: result.files.count).text)
            } else {
                let n = result.errors.count
                FileHandle.standardError.write(Data("\(directory): \(n) error\(n == 1 ? "" : "s"); nothing was applied\n".utf8))
            }
        }
        if !result.isValid { throw HavenExit.failure }
    }
}

/// The stable JSON shape of `haven validate --output json` (formatVersion 1).
struct ValidationReport: Encodable {
    let formatVersion = 1
    let valid: Bool
    let errors: [SpecDiagnostic]
    let warnings: [SpecDiagnostic]
    let files: [String]
    let state: DesiredState?

    init(result: LoadResult) {
        valid = result.isValid
        errors = result.errors
        warnings = result.warnings
        files = result.files
        state = result.state
    }

    func jsonText() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }
}
