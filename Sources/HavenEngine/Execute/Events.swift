import HavenCore

/// What the executor reports while it works; the CLI renders it (progress bars on a TTY, JSON
/// lines otherwise), the daemon will count it.
public enum ExecutionEvent: Sendable {
    case started(PlanAction)
    case progress(PlanAction, disk: String, bytesDone: Int64, bytesTotal: Int64)
    case log(PlanAction?, String)
    case finished(PlanAction, String)
    case failed(PlanAction, String)
    case skipped(PlanAction, String)
}

/// The outcome of applying a plan.
public struct ExecutionResult: Sendable {
    public var succeeded: [PlanAction] = []
    public var failed: [(PlanAction, String)] = []
    public var skipped: [(PlanAction, String)] = []
    public var ok: Bool { failed.isEmpty }
}
