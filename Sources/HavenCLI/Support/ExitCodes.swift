import ArgumentParser

/// haven's exit-code contract, shared by every command (kubectl/Flux/Argo convention).
enum HavenExit {
    /// Success; for `diff`: the pools already match.
    static let ok = ExitCode(0)
    /// `diff` only: changes are pending.
    static let changesPending = ExitCode(1)
    /// Invalid configuration, a pool error, or anything that failed.
    static let failure = ExitCode(2)
}

/// `--output text|json`, shared by commands that can speak to machines.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}
