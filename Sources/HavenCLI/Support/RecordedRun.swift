import Foundation
import HavenCore
import HavenEngine

/// One reconcile run as `apply`, `failback` and `backup now` make it: progress on standard error,
/// the run recorded in the history, SIGINT/SIGTERM cancelling at the next durable step. The
/// caller closes the record (`recorder.finish`) once it knows how the run ended.
struct RecordedRun {
    let report: ReconcileReport
    /// SIGINT or SIGTERM arrived while it ran.
    let interrupted: Bool
    let recorder: RunRecorder

    static func start(_ engine: Engine, _ request: ReconcileRequest,
                      approve: @escaping @Sendable (Plan) async throws -> Bool) async throws -> RecordedRun {
        let progress = ProgressRenderer(tty: stderrIsInteractive)
        let recorder = RunRecorder(catalog: engine.catalog, command: RunRecorder.commandLine)
        let work = Task {
            try await engine.reconcile(request, events: { progress.handle($0); recorder.handle($0) }, approve: approve)
        }
        let signals = SignalCancellation { work.cancel() }
        defer { signals.stop() }
        let report: ReconcileReport
        do { report = try await work.value } catch {
            recorder.finish(error: error)
            throw error
        }
        progress.finish()
        return RecordedRun(report: report, interrupted: work.isCancelled, recorder: recorder)
    }

    /// The terminal's consent: true with --auto-approve or when the user types `yes`; refuses
    /// (throws) when standard input is not a terminal, so a script never hangs on a question.
    static func confirm(_ question: String, autoApprove: Bool, notATerminal: String, cancelled: String) throws -> Bool {
        if autoApprove { return true }
        guard stdinIsTTY else { throw CLIError("\(notATerminal): standard input is not a terminal; pass --auto-approve") }
        print("\n\(question) Only 'yes' is accepted: ", terminator: "")
        fflush(nil)
        guard readLine()?.trimmingCharacters(in: .whitespaces) == "yes" else {
            print(cancelled)
            return false
        }
        return true
    }
}
