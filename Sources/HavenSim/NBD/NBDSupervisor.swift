import Foundation

/// The one thread that starts, restarts and reconfigures a pool's nbdkit processes.
///
/// nbdkit runs with `--exit-with-parent`, which Linux implements with `PR_SET_PDEATHSIG`: the
/// signal comes when the *thread* that spawned the child exits, not the process. A purpose added
/// at run time (`network.add_purpose`) used to restart nbdkit from a thread made for the purpose,
/// which ended at once, so nbdkit was told to quit moments after it started: the connection in
/// flight was served and every later one dropped. Every spawn happens here instead, on a thread
/// that lives as long as the pool (and the world-file case no longer depends on the thread that
/// happened to call `start()`).
final class NBDSupervisor: @unchecked Sendable {
    // @unchecked: `jobs` and `stopped` are only read and written while `condition` is locked.
    private let condition = NSCondition()
    private var jobs: [@Sendable () -> Void] = []
    private var stopped = false

    init() {
        let thread = Thread { [self] in loop() }
        thread.name = "haven-sim-nbd"
        thread.start()
    }

    /// Runs `job` on the supervisor thread, later.
    func submit(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        defer { condition.unlock() }
        guard !stopped else { return }
        jobs.append(job)
        condition.signal()
    }

    /// Runs `job` on the supervisor thread and waits for its outcome.
    func run(_ job: @escaping @Sendable () throws -> Void) throws {
        let done = DispatchSemaphore(value: 0)
        let outcome = OutcomeBox()
        submit {
            do { try job() } catch { outcome.error = error }
            done.signal()
        }
        done.wait()
        if let error = outcome.error { throw error }
    }

    /// Ends the thread once the jobs already submitted have run.
    func stop() {
        condition.lock()
        stopped = true
        condition.signal()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopped { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }

    /// `@unchecked`: written by the job before it signals the semaphore, read after the wait.
    private final class OutcomeBox: @unchecked Sendable {
        var error: (any Error)?
    }
}
