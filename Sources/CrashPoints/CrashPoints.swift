import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Test instrumentation for crash tests and `make reliability`: every durable step of haven (a
/// repository file made durable, a catalog transaction committed, a call that changes a pool sent
/// or answered) is a numbered crash point.
///
/// - `HAVEN_CRASH_AT=N`: the process dies (`_exit(99)`, no clean-up, as under `kill -9`) at the
///   Nth step, after saying which on standard error.
/// - `HAVEN_CRASH_AT=LABEL#K`: it dies at the Kth step named exactly LABEL (`#K` omitted: the
///   first), e.g. `after xapi VM.snapshot#2`: a step a test can name whatever runs beside it.
/// - `HAVEN_CRASH_TRACE=FILE`: each step is appended to FILE as `N label`, so a harness can count
///   an operation's steps and name the one it killed.
///
/// Without either variable `hit` returns at once; nothing else reads them.
public enum CrashPoints {
    struct Settings: Sendable {
        var limit: Int
        /// With `LABEL#K`: the label, and K in `limit`.
        var label: String?
        var trace: Int32
        var active: Bool { limit > 0 || trace >= 0 }
    }

    static let settings: Settings = {
        let env = ProcessInfo.processInfo.environment
        let spec = env["HAVEN_CRASH_AT"] ?? ""
        var limit = Int(spec) ?? 0
        var label: String?
        if limit == 0, !spec.isEmpty {
            let parts = spec.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)
            label = String(parts[0])
            limit = parts.count > 1 ? Int(parts[1]) ?? 1 : 1
        }
        var trace: Int32 = -1
        if let path = env["HAVEN_CRASH_TRACE"], !path.isEmpty {
            trace = open(path, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        }
        return Settings(limit: limit, label: label, trace: trace)
    }()

    /// Steps so far, and steps named like `settings.label`.
    static let count = Mutex((all: 0, named: 0))

    /// True when a crash point can fire or is traced: callers may skip building a label otherwise.
    public static var active: Bool { settings.active }

    /// One durable step, named by `label`.
    public static func hit(_ label: @autoclosure () -> String) {
        let s = settings
        guard s.active else { return }
        let text = label()
        let (now, named) = count.withLock { n -> (Int, Int) in
            n.all += 1
            if text == s.label { n.named += 1 }
            return (n.all, n.named)
        }
        if s.trace >= 0 {
            let line = Array("\(now) \(text)\n".utf8)
            _ = line.withUnsafeBytes { write(s.trace, $0.baseAddress, $0.count) }
        }
        if s.limit > 0, s.label == nil ? now >= s.limit : (text == s.label && named >= s.limit) {
            let message = Array("haven: crash point \(now) (\(text))\n".utf8)
            _ = message.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            _exit(99)
        }
    }

    static let namedStep: String? = ProcessInfo.processInfo.environment["HAVEN_CRASH_STEP"]

    /// With `HAVEN_CRASH_STEP=label`, the process dies (`_exit(99)`, no clean-up) when it reaches
    /// the step of that name: crash tests stop a run between two steps of the pool's side (a replica
    /// created but not yet recorded, an xva replica recorded but the old one not yet removed).
    public static func step(_ label: String) {
        hit(label)
        guard let namedStep, namedStep == label else { return }
        let message = Array("haven: crash step \(label)\n".utf8)
        _ = message.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        _exit(99)
    }
}
