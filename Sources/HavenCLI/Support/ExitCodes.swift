import ArgumentParser
import Foundation

/// haven's exit-code contract, shared by every command (kubectl/Flux/Argo convention).
enum HavenExit {
    /// Success; for `diff`: the pools already match.
    static let ok = ExitCode(0)
    /// `diff` only: changes are pending.
    static let changesPending = ExitCode(1)
    /// Invalid configuration, a pool error, or anything that failed.
    static let failure = ExitCode(2)
}

/// An error the CLI reports itself: the message goes to standard error, the exit status is 2.
struct CLIError: Error, CustomStringConvertible {
    enum Code: String { case usage, config, io, failed }
    var code: Code
    var message: String

    init(_ message: String, code: Code = .failed) {
        self.code = code
        self.message = message
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

    static func report(_ error: any Error) {
        if error is ExitCode { return }
        FileHandle.standardError.write(Data("haven: \(describe(error))\n".utf8))
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
