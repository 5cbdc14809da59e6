import Foundation
import HavenCatalog
import HavenCore
import HavenEngine

/// Records an `apply` or `backup now` run in the catalog's run history (`haven history`), from
/// the execution events the engine reports. Recording never fails the run: a catalog that
/// cannot be written is said on standard error once.
final class RunRecorder: @unchecked Sendable {
    // @unchecked: `warned` and `started` are guarded by `lock`; the rest is immutable.
    let catalog: Catalog
    let id: Int64?
    let lock = NSLock()
    var warned = false
    /// When each action started: the history keeps durations (the status page charts them).
    var started: [ActionKey: Date] = [:]

    init(catalog: Catalog, command: String) {
        self.catalog = catalog
        do {
            id = try catalog.startRun(command: command, at: currentTime())
        } catch {
            id = nil
            FileHandle.standardError.write(Data("haven: warning: this run is not recorded in the history: \(error)\n".utf8))
        }
    }

    /// The command as typed, without the program name.
    static var commandLine: String { CommandLine.arguments.dropFirst().joined(separator: " ") }

    func handle(_ e: ExecutionEvent) {
        guard let id else { return }
        var rec: RunActionRecord?
        func make(_ a: PlannedAction, _ result: String, _ message: String) -> RunActionRecord {
            let began = lock.withLock { started.removeValue(forKey: a.key) }
            return RunActionRecord(runID: id, actionKey: a.key.description, kind: a.kind.rawValue, pool: a.pool, vm: a.vm?.name, vmUUID: a.vm?.uuid,
                                   policy: a.policy, result: result, message: message, startedAt: began, at: currentTime())
        }
        switch e {
        case .started(let a):
            lock.withLock { started[a.key] = currentTime() }
            return
        case .finished(let a, let o):
            var r = make(a, "succeeded", ([o.summary] + o.notes).joined(separator: "; "))
            r.backupID = o.backupID
            r.bytesRead = o.bytesRead
            r.bytesStored = o.bytesStored
            rec = r
        case .failed(let a, let why): rec = make(a, "failed", why)
        case .skipped(let a, let why): rec = make(a, "skipped", why)
        default: return
        }
        guard let rec else { return }
        attempt { try catalog.recordRunAction(rec) }
    }

    func finish(_ report: ReconcileReport, interrupted: Bool) {
        let r = report.result
        let counts = "\(r.succeeded.count) done, \(r.failed.count) failed, \(r.skipped.count) skipped"
        let unreachable = report.unreachable.keys.sorted().map { "pool \($0) could not be read" }
        let result: String
        var message = ([counts] + unreachable).joined(separator: "; ")
        if !report.approved {
            result = "cancelled"
            message = "not approved; nothing was done"
        } else if report.plan.isEmpty {
            result = report.unreachable.isEmpty ? "no-changes" : "failed"
            message = (["nothing to do"] + unreachable).joined(separator: "; ")
        } else {
            result = report.ok && !interrupted ? "succeeded" : "failed"
            if interrupted { message += "; interrupted" }
        }
        close(result, message)
    }

    func finish(error: any Error) { close("error", ExitMapping.describe(error)) }

    private func close(_ result: String, _ message: String) {
        guard let id else { return }
        attempt { try catalog.finishRun(id, at: currentTime(), result: result, message: message) }
    }

    private func attempt(_ body: () throws -> Void) {
        do { try body() } catch {
            lock.lock()
            defer { lock.unlock() }
            guard !warned else { return }
            warned = true
            FileHandle.standardError.write(Data("haven: warning: cannot record the run history: \(error)\n".utf8))
        }
    }
}

/// The closest of `candidates` to `word`, when close enough to be a typo.
func closestMatch(_ word: String, _ candidates: [String]) -> String? { TargetScope.closestMatch(word, candidates) }

func didYouMean(_ word: String, _ candidates: [String]) -> String {
    closestMatch(word, candidates).map { "; did you mean '\($0)'?" } ?? ""
}
