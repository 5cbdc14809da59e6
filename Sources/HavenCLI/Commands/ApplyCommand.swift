import ArgumentParser
import Foundation
import HavenCore
import HavenEngine

struct ApplyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply", abstract: "Make the pools match the configuration.",
        discussion: """
            Plans again (or takes a plan saved by `haven diff --out PLAN`, refusing it when the pools, the catalog \
            or the configuration changed since), shows it, asks on a terminal unless --auto-approve, and executes \
            it within each pool's limits. Each pool is observed and applied on its own: one that cannot be read is \
            reported and the others go ahead. Progress goes to standard error: a status line on a terminal, JSON \
            lines otherwise. SIGINT or SIGTERM stops it at the next durable step: no half version, no orphan \
            snapshot, sessions logged out.

            Exit status: 0 when everything succeeded (or there was nothing to do), 2 when anything failed or a \
            pool could not be read — what succeeded stays done and recorded.
            """)

    @OptionGroup var options: EngineOptions

    @Flag(help: "Do not ask for confirmation.")
    var autoApprove = false

    @Option(help: "Seconds to wait for another haven working on the same pool (default: fail at once).")
    var lockTimeout: Double = 0

    @Argument(help: "A plan saved by `haven diff --out`.")
    var planFile: String?

    func run() async throws {
        let desired = try options.loadDesired()
        let engine = try options.engine(desired)
        let scope = try options.scope(desired)
        let saved = try planFile.map { file in
            do { return try PlanRenderer.load(file) } catch { throw CLIError("cannot read the plan \(file): \(ExitMapping.describe(error))", code: .io) }
        }
        let request = ReconcileRequest(scope: scope, savedPlan: saved, lockTimeout: lockTimeout, now: { currentTime() })
        let approve = autoApprove
        let run = try await RecordedRun.start(engine, request) { plan in
            print(PlanRenderer.text(plan, color: useColor))
            return try RecordedRun.confirm("Apply these changes?", autoApprove: approve, notATerminal: "not applying", cancelled: "Apply cancelled.")
        }
        let report = run.report
        run.recorder.finish(report, interrupted: run.interrupted)
        if report.plan.isEmpty {
            print(PlanRenderer.text(report.plan, color: useColor))
            if !report.ok { throw HavenExit.failure }
            return
        }
        guard report.approved else { throw HavenExit.changesPending }
        try Self.printOutcome(report, title: "Apply", interrupted: run.interrupted, runID: run.recorder.id)
    }

    /// What `apply` and `backup now` print once the plan ran; throws the exit status (2 when anything failed).
    static func printOutcome(_ report: ReconcileReport, title: String, interrupted: Bool, runID: Int64?) throws {
        let r = report.result
        print("")
        print("\(title) complete: \(r.succeeded.count) done, \(r.failed.count) failed, \(r.skipped.count) skipped."
              + (runID.map { " (run \($0): `haven history show \($0)`)" } ?? ""))
        for (a, o) in r.succeeded { for n in o.notes { print("  note: \(a.vm?.name ?? a.pool): \(n)") } }
        for (a, why) in r.failed { print("  failed: \(a.headline) (\(a.vm?.name ?? a.pool)): \(why)") }
        for (a, why) in r.skipped { print("  skipped: \(a.headline) (\(a.vm?.name ?? a.pool)): \(why)") }
        for (pool, why) in report.unreachable.sorted(by: { $0.key < $1.key }) { print("  not applied: pool \(pool) cannot be read: \(why)") }
        if interrupted { throw CLIError("interrupted: running work was stopped at its next durable step and cleaned up") }
        if !report.ok { throw HavenExit.failure }
    }
}

/// Cancels a task on SIGINT or SIGTERM (the default action, dying on the spot, would leave a
/// snapshot behind). A second signal kills as usual.
final class SignalCancellation: @unchecked Sendable {
    // @unchecked: the sources are created once and only cancelled afterwards.
    let sources: [any DispatchSourceSignal]

    init(_ cancel: @escaping @Sendable () -> Void) {
        var list: [any DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler {
                FileHandle.standardError.write(Data("\nhaven: stopping at the next durable step (again to kill)\n".utf8))
                signal(sig, SIG_DFL)
                cancel()
            }
            s.resume()
            list.append(s)
        }
        sources = list
    }

    func stop() { for s in sources { s.cancel() } }
}

/// Progress for people (one status line on a terminal) or machines (JSON lines).
final class ProgressRenderer: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    let tty: Bool
    let lock = NSLock()
    var starts: [ActionKey: Date] = [:]
    var lastDraw = Date.distantPast

    init(tty: Bool) { self.tty = tty }

    func write(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }

    func json(_ fields: [String: Any]) {
        var f = fields
        f["formatVersion"] = 1
        f["time"] = ISO8601DateFormatter().string(from: Date())
        if let data = try? JSONSerialization.data(withJSONObject: f, options: [.sortedKeys]) { write(String(decoding: data, as: UTF8.self) + "\n") }
    }

    func common(_ a: PlannedAction) -> [String: Any] {
        var f: [String: Any] = ["action": a.kind.rawValue, "key": a.key.description, "pool": a.pool, "what": a.headline]
        if let vm = a.vm { f["vm"] = vm.name }
        if let p = a.policy { f["policy"] = p }
        return f
    }

    func handle(_ e: ExecutionEvent) {
        lock.lock()
        defer { lock.unlock() }
        switch e {
        case .started(let a):
            starts[a.key] = Date()
            if tty { write("\r\u{1B}[K→ \(a.vm?.name ?? a.pool): \(a.headline)\n") } else { json(common(a).merging(["event": "started"]) { $1 }) }
        case .progress(let a, let disk, let done, let total):
            if tty {
                guard Date().timeIntervalSince(lastDraw) > 0.2 || done == total else { return }
                lastDraw = Date()
                let elapsed = Date().timeIntervalSince(starts[a.key] ?? Date())
                let rate = elapsed > 0 ? Double(done) / elapsed : 0
                let eta = rate > 0 ? Double(total - done) / rate : 0
                write("\r\u{1B}[K  \(a.vm?.name ?? "") \(disk): \(humanBytes(done)) / \(humanBytes(total)), \(humanBytes(Int64(rate)))/s, ETA \(humanDuration(eta))")
            } else {
                json(common(a).merging(["event": "progress", "disk": disk, "bytes": done, "total": total]) { $1 })
            }
        case .log(let a, let text):
            if tty { write("\r\u{1B}[K  \(a?.vm?.name ?? ""): \(text)\n") } else { json(["event": "log", "vm": a?.vm?.name ?? "", "pool": a?.pool ?? "", "message": text]) }
        case .finished(let a, let o):
            if tty {
                write("\r\u{1B}[K✔ \(a.vm?.name ?? a.pool): \(o.summary)\n")
            } else {
                var f = common(a).merging(["event": "finished", "result": o.summary, "notes": o.notes]) { $1 }
                if let id = o.backupID { f["backupID"] = id }
                if let r = o.bytesRead { f["bytesRead"] = r }
                if let s = o.bytesStored { f["bytesStored"] = s }
                json(f)
            }
        case .failed(let a, let text):
            if tty { write("\r\u{1B}[K✘ \(a.vm?.name ?? a.pool): \(a.headline): \(text)\n") } else { json(common(a).merging(["event": "failed", "error": text]) { $1 }) }
        case .skipped(let a, let text):
            if tty { write("\r\u{1B}[K- \(a.vm?.name ?? a.pool): skipped \(a.headline): \(text)\n") } else { json(common(a).merging(["event": "skipped", "reason": text]) { $1 }) }
        }
    }

    func finish() {
        if tty { write("\r\u{1B}[K") }
    }
}

/// Colour on a terminal, unless NO_COLOR is set or TERM is dumb.
var useColor: Bool {
    let env = ProcessInfo.processInfo.environment
    return stdoutIsTTY && env["NO_COLOR"] == nil && env["TERM"] != "dumb"
}

func humanDuration(_ seconds: Double) -> String {
    let s = Int(seconds.rounded())
    if s < 60 { return "\(s)s" }
    if s < 3_600 { return "\(s / 60)m\(String(format: "%02d", s % 60))s" }
    return "\(s / 3_600)h\(String(format: "%02d", (s % 3_600) / 60))m"
}
