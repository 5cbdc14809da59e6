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
/// - `HAVEN_CRASH_TRACE=FILE`: each step is appended to FILE as `N label`, so a harness can count
///   an operation's steps and name the one it killed.
///
/// Without either variable `hit` returns at once; nothing else reads them.
public enum CrashPoints {
    struct Settings: Sendable {
        var limit: Int
        var trace: Int32
    }

    static let settings: Settings = {
        let env = ProcessInfo.processInfo.environment
        let limit = Int(env["HAVEN_CRASH_AT"] ?? "") ?? 0
        var trace: Int32 = -1
        if let path = env["HAVEN_CRASH_TRACE"], !path.isEmpty {
            trace = open(path, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        }
        return Settings(limit: limit, trace: trace)
    }()

    static let count = Mutex(0)

    /// True when a crash point can fire or is traced: callers may skip building a label otherwise.
    public static var active: Bool { settings.limit > 0 || settings.trace >= 0 }

    /// One durable step, named by `label`.
    public static func hit(_ label: @autoclosure () -> String) {
        let s = settings
        guard s.limit > 0 || s.trace >= 0 else { return }
        let now = count.withLock { n -> Int in
            n += 1
            return n
        }
        let text = label()
        if s.trace >= 0 {
            let line = Array("\(now) \(text)\n".utf8)
            _ = line.withUnsafeBytes { write(s.trace, $0.baseAddress, $0.count) }
        }
        if s.limit > 0, now >= s.limit {
            let message = Array("haven: crash point \(now) (\(text))\n".utf8)
            _ = message.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            _exit(99)
        }
    }
}
