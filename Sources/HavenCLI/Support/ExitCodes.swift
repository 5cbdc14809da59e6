import ArgumentParser
import Foundation
import XenAPI
import HavenData
import HavenEngine
import HavenMover

/// haven's exit-code contract, shared by every command (kubectl/Flux/Argo convention).
enum HavenExit {
    /// Success; for `diff`: the pools already match.
    static let ok = ExitCode(0)
    /// `diff` only: changes are pending.
    static let changesPending = ExitCode(1)
    /// Invalid configuration, a pool error, or anything that failed.
    static let failure = ExitCode(2)
    /// `status --check` only: some VM's RPO is missed.
    static let rpoMissed = ExitCode(3)
}

/// An error the CLI reports itself: the message goes to standard error, the exit status is 2.
struct CLIError: Error, CustomStringConvertible {
    /// A stable code, as `--output json` reports it (`error.code`).
    struct Code: RawRepresentable, Hashable {
        var rawValue: String
        static let usage = Code(rawValue: "usage")
        static let config = Code(rawValue: "config")
        static let io = Code(rawValue: "io")
        static let failed = Code(rawValue: "failed")
        static let notFound = Code(rawValue: "not-found")
        static let exists = Code(rawValue: "exists")
        static let refused = Code(rawValue: "refused")
    }

    var code: Code
    var message: String

    init(_ message: String, code: Code = .failed) {
        self.code = code
        self.message = message
    }

    /// The data plane's error, with its code.
    init(data e: DataError) {
        code = Code(rawValue: e.code.rawValue)
        message = e.description
    }

    var description: String { message }
}

/// `--output text|json`, shared by commands that can speak to machines.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

/// The one mapping from anything a command throws to an exit status: `ExitCode` as it is, the
/// argument parser's own errors (help, usage: 0 / 64) as the parser says, and every other error
/// — ours, the pool's, the repository's, a decoding error — a message on standard error and 2.
/// Nothing leaves with 1, which means "changes pending".
enum ExitMapping {
    static func exitStatus(for error: any Error) -> Int32 {
        if let e = error as? ExitCode { return e.rawValue }
        return 2
    }

    /// With `--output json`, a failure is a JSON object on standard output (and nothing on
    /// standard error, which may be carrying JSON lines): `{formatVersion, error: {code, message}}`.
    static func report(_ error: any Error, arguments: [String] = CommandLine.arguments) {
        if error is ExitCode { return }
        if wantsJSON(arguments) {
            let obj: [String: Any] = ["formatVersion": 1, "error": ["code": code(for: error), "message": describe(error)]]
            if let data = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]) {
                FileHandle.standardOutput.write(data + Data("\n".utf8))
                return
            }
        }
        FileHandle.standardError.write(Data("haven: \(describe(error))\n".utf8))
    }

    static func wantsJSON(_ arguments: [String]) -> Bool {
        for (i, a) in arguments.enumerated() {
            if a == "--output=json" { return true }
            if a == "--output", i + 1 < arguments.count, arguments[i + 1] == "json" { return true }
        }
        return false
    }

    /// The stable code of an error, in one spelling (kebab-case): ours, the engine's, the data
    /// plane's; a pool's XenAPI code as xapi spells it; `failed` otherwise.
    static func code(for error: any Error) -> String {
        switch error {
        case let e as CLIError: return kebab(e.code.rawValue)
        case let e as EngineError: return kebab(e.code.rawValue)
        case let e as DataError: return kebab(e.code.rawValue)
        case let e as MoverError: return e.code.name
        case let e as XenAPIError: return e.code
        case is DecodingError: return "damaged-file"
        default: return "failed"
        }
    }

    /// `notFound` → `not-found`; already kebab-case stays as it is.
    static func kebab(_ s: String) -> String {
        var out = ""
        for ch in s {
            if ch.isUppercase {
                if !out.isEmpty && out.last != "-" { out.append("-") }
                out.append(Character(ch.lowercased()))
            } else {
                out.append(ch == "_" ? "-" : ch)
            }
        }
        return out
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case let e as DecodingError:
            switch e {
            case .dataCorrupted(let c): return "cannot read the file: \(c.debugDescription)"
            case .keyNotFound(let k, _): return "cannot read the file: the key '\(k.stringValue)' is missing"
            case .typeMismatch(_, let c), .valueNotFound(_, let c):
                return "cannot read the file: \(c.codingPath.map(\.stringValue).joined(separator: ".")): \(c.debugDescription)"
            @unknown default: return "\(e)"
            }
        case let e as any CustomStringConvertible: return e.description
        default: return "\(error)"
        }
    }
}
