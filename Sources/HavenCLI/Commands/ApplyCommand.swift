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
            it within each pool's limits. Progress goes to standard error: a status line on a terminal, JSON lines \
            otherwise.

            Exit status: 0 when everything succeeded (or there was nothing to do), 2 when anything failed — what \
            succeeded stays done and recorded.
            """)

    @OptionGroup var options: EngineOptions

    @Flag(help: "Do not ask for confirmation.")
    var autoApprove = false

    @Option(help: "Seconds to wait for another haven working on the same pool (default: fail at once).")
    var lockTimeout: Double = 0

    @Argument(help: "A plan saved by `haven diff --out`.")
    var planFile: String?

    func run() async throws {
        let desired = options.loadDesired()
        let engine = options.engine(desired)
        let scope = options.scope(desired)
        let pools = scope.pools.sorted()
        do {
            try await lockAll(pools, engine: engine) {
                try await execute(engine: engine, scope: scope)
            }
        } catch let e as ExitCode {
            throw e
        } catch {
            fail("\(error)")
        }
    }

    /// Takes every pool's lock, in name order (two applies never wait on each other crosswise).
    func lockAll(_ pools: [String], engine: Engine, _ body: @escaping @Sendable () async throws -> Void) async throws {
        guard let first = pools.first else { return try await body() }
        let rest = Array(pools.dropFirst())
        try await engine.state.withPoolLock(first, timeout: lockTimeout) {
            try await lockAll(rest, engine: engine, body)
        }
    }

    func execute(engine: Engine, scope: TargetScope) async throws {
        let observed = try await engine.observe(pools: scope.pools)
        let plan: Plan
        if let planFile {
            let saved = try PlanRenderer.load(planFile)
            let now = try engine.fingerprint(observed: observed)
            guard saved.fingerprint == now else {
                FileHandle.standardError.write(Data("haven: the saved plan \(planFile) is stale: the pools, the catalog or the configuration changed since it was made; run `haven diff --out` again\n".utf8))
                throw HavenExit.failure
            }
            plan = saved
        } else {
            plan = try engine.plan(observed: observed, now: currentTime(), scope: scope.policies)
        }
        print(PlanRenderer.text(plan, color: stdoutIsTTY))
        if plan.isEmpty {
            await engine.logout()
            return
        }
        if !autoApprove {
            guard stdinIsTTY else {
                FileHandle.standardError.write(Data("haven: not applying: standard input is not a terminal; pass --auto-approve\n".utf8))
                throw HavenExit.failure
            }
            print("\nApply these changes? Only 'yes' is accepted: ", terminator: "")
            fflush(nil)
            guard readLine()?.trimmingCharacters(in: .whitespaces) == "yes" else {
                print("Apply cancelled.")
                throw HavenExit.changesPending
            }
        }
        let progress = ProgressRenderer(tty: isatty(2) == 1)
        let executor = engine.executor(observed: observed, now: { currentTime() }, emit: { progress.handle($0) })
        let result = await executor.apply(plan)
        progress.finish()
        await engine.logout()
        print("")
        print("Apply complete: \(result.succeeded.count) done, \(result.failed.count) failed, \(result.skipped.count) skipped.")
        for (a, why) in result.failed { print("  failed: \(a.headline) (\(a.vm ?? a.pool)): \(why)") }
        for (a, why) in result.skipped { print("  skipped: \(a.headline) (\(a.vm ?? a.pool)): \(why)") }
        if !result.ok { throw HavenExit.failure }
    }
}

/// Progress for people (one status line on a terminal) or machines (JSON lines).
final class ProgressRenderer: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    let tty: Bool
    let lock = NSLock()
    var starts: [String: Date] = [:]
    var lastDraw = Date.distantPast

    init(tty: Bool) { self.tty = tty }

    func write(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }

    func json(_ fields: [String: Any]) {
        var f = fields
        f["time"] = ISO8601DateFormatter().string(from: Date())
        if let data = try? JSONSerialization.data(withJSONObject: f, options: [.sortedKeys]) { write(String(decoding: data, as: UTF8.self) + "\n") }
    }

    func handle(_ e: ExecutionEvent) {
        lock.lock()
        defer { lock.unlock() }
        switch e {
        case .started(let a):
            starts[a.headline + (a.vmUUID ?? "")] = Date()
            if tty { write("\r\u{1B}[K→ \(a.vm ?? a.pool): \(a.headline)\n") } else { json(["event": "started", "action": a.kind.rawValue, "vm": a.vm ?? "", "pool": a.pool, "what": a.headline]) }
        case .progress(let a, let disk, let done, let total):
            if tty {
                guard Date().timeIntervalSince(lastDraw) > 0.2 || done == total else { return }
                lastDraw = Date()
                let elapsed = Date().timeIntervalSince(starts[a.headline + (a.vmUUID ?? "")] ?? Date())
                let rate = elapsed > 0 ? Double(done) / elapsed : 0
                let eta = rate > 0 ? Double(total - done) / rate : 0
                write(String(format: "\r\u{1B}[K  %@ %@: %@ / %@, %@/s, ETA %.0fs", a.vm ?? "", disk, humanBytes(done), humanBytes(total), humanBytes(Int64(rate)), eta))
            } else {
                json(["event": "progress", "vm": a.vm ?? "", "disk": disk, "bytes": done, "total": total])
            }
        case .log(let a, let text):
            if tty { write("\r\u{1B}[K  \(a?.vm ?? ""): \(text)\n") } else { json(["event": "log", "vm": a?.vm ?? "", "message": text]) }
        case .finished(let a, let text):
            if tty { write("\r\u{1B}[K✔ \(a.vm ?? a.pool): \(text)\n") } else { json(["event": "finished", "action": a.kind.rawValue, "vm": a.vm ?? "", "result": text]) }
        case .failed(let a, let text):
            if tty { write("\r\u{1B}[K✘ \(a.vm ?? a.pool): \(a.headline): \(text)\n") } else { json(["event": "failed", "action": a.kind.rawValue, "vm": a.vm ?? "", "error": text]) }
        case .skipped(let a, let text):
            if tty { write("\r\u{1B}[K- \(a.vm ?? a.pool): skipped \(a.headline): \(text)\n") } else { json(["event": "skipped", "action": a.kind.rawValue, "vm": a.vm ?? "", "reason": text]) }
        }
    }

    func finish() {
        if tty { write("\r\u{1B}[K") }
    }
}
