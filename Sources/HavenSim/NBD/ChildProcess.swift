import CSSL
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A child process started with a clean signal mask and default dispositions.
///
/// Foundation's `Process` passes on the spawning thread's signal mask, and Swift's threads
/// block most signals: a child like nbdkit then never sees SIGTERM (nor the parent-death
/// signal), and outlives the simulator.
final class ChildProcess: @unchecked Sendable {
    // @unchecked: `pid` is set once in init; `reaped` is only touched under `lock`.
    let pid: pid_t
    private let lock = NSLock()
    private var reaped = false

    /// `inherit` maps descriptors of this process to the numbers the child sees them as.
    init(executable: String, arguments: [String], stderrPath: String?, inherit: [(parent: Int32, child: Int32)] = []) throws {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath ?? "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0o644)
        for (parent, child) in inherit { posix_spawn_file_actions_adddup2(&actions, parent, child) }
        // Nothing else of the parent's: a long-lived child (a mover) holding the write end of a pipe
        // another thread made for its own child would keep that pipe from ever ending.
        haven_spawn_add_closefrom(&actions, (inherit.map(\.child).max() ?? 2) + 1)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, &actions, &attr, argv, environ)
        guard rc == 0 else { throw SimError("cannot start \(executable): \(String(cString: strerror(rc)))") }
        pid = child
    }

    var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        if reaped { return false }
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid {
            reaped = true
            return false
        }
        return true
    }

    /// SIGTERM, then SIGKILL if it has not gone after `grace` seconds; always reaps.
    func stop(grace: Double = 3) {
        guard isRunning else { return }
        kill(pid, SIGTERM)
        let deadline = Date().addingTimeInterval(grace)
        while Date() < deadline {
            if !isRunning { return }
            usleep(20_000)
        }
        kill(pid, SIGKILL)
        lock.lock()
        defer { lock.unlock() }
        if !reaped {
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            reaped = true
        }
    }

    deinit { stop(grace: 1) }
}
