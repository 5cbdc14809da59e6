import Foundation
import HavenCore

/// Runs a plan's action graph: an action starts once everything it comes `after` has finished
/// and everything it `requires` has succeeded; when a required action failed or was skipped, it is
/// skipped with that reason. Concurrency limits are the runners' business (per-pool limiters);
/// the scheduler only orders. Cancelling the calling task starts nothing new: what is not started
/// is reported as skipped, what runs is cancelled and cleans up after itself.
struct Scheduler: Sendable {
    let plan: Plan
    let emit: @Sendable (ExecutionEvent) -> Void
    let perform: @Sendable (PlannedAction) async throws -> ActionOutcome

    enum Status { case succeeded, failed, skipped }

    func run() async -> ExecutionResult {
        var result = ExecutionResult()
        var status: [ActionKey: Status] = [:]
        var pending = plan.actions
        await withTaskGroup(of: (PlannedAction, Result<ActionOutcome, any Error>).self) { group in
            var running = 0

            func skip(_ a: PlannedAction, _ why: String) {
                status[a.key] = .skipped
                result.skipped.append((a, why))
                emit(.skipped(a, why))
            }

            func launchReady() {
                var progress = true
                while progress {
                    progress = false
                    var waiting: [PlannedAction] = []
                    for a in pending {
                        if Task.isCancelled {
                            skip(a, "the run was cancelled before it started")
                            progress = true
                            continue
                        }
                        if let bad = a.requires.first(where: { status[$0] == .failed || status[$0] == .skipped }) {
                            let what = plan.action(bad)?.headline ?? bad.description
                            skip(a, "it requires '\(what)', which \(status[bad] == .failed ? "failed" : "was skipped")")
                            progress = true
                            continue
                        }
                        let ready = a.requires.allSatisfy { status[$0] == .succeeded } && a.after.allSatisfy { status[$0] != nil }
                        if ready {
                            running += 1
                            emit(.started(a))
                            group.addTask { (a, await Result(catching: { try await perform(a) })) }
                        } else {
                            waiting.append(a)
                        }
                    }
                    pending = waiting
                }
            }

            launchReady()
            while running > 0, let (a, outcome) = await group.next() {
                running -= 1
                switch outcome {
                case .success(let o):
                    status[a.key] = .succeeded
                    result.succeeded.append((a, o))
                    emit(.finished(a, o))
                case .failure(let e):
                    status[a.key] = .failed
                    let text = Task.isCancelled && e is CancellationError ? "cancelled" : "\(e)"
                    result.failed.append((a, text))
                    emit(.failed(a, text))
                }
                launchReady()
            }
            // Whatever still waits depends on something that can never finish (a cycle).
            for a in pending { skip(a, "its dependencies form a cycle") }
        }
        return result
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
