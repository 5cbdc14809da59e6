import Foundation
import HavenCore

/// What an action produced, beyond "it worked".
public struct ActionOutcome: Sendable, Codable, Hashable {
    public var summary: String
    public var backupID: String?
    public var bytesRead: Int64?
    public var bytesStored: Int64?
    /// Things a person should know about a success (a disk read in full after a broken CBT chain, a clean-up left for later).
    public var notes: [String]

    public init(_ summary: String, backupID: String? = nil, bytesRead: Int64? = nil, bytesStored: Int64? = nil, notes: [String] = []) {
        self.summary = summary
        self.backupID = backupID
        self.bytesRead = bytesRead
        self.bytesStored = bytesStored
        self.notes = notes
    }
}

/// What the executor reports while it works; the CLI renders it (a status line on a TTY, JSON
/// lines otherwise), the daemon counts it.
public enum ExecutionEvent: Sendable {
    case started(PlannedAction)
    /// At most about once a second per disk, with byte counts that never go backwards.
    case progress(PlannedAction, disk: String, bytesDone: Int64, bytesTotal: Int64)
    case log(PlannedAction?, String)
    case finished(PlannedAction, ActionOutcome)
    case failed(PlannedAction, String)
    case skipped(PlannedAction, String)
}

/// The outcome of applying a plan, per action.
public struct ExecutionResult: Sendable {
    public var succeeded: [(PlannedAction, ActionOutcome)] = []
    public var failed: [(PlannedAction, String)] = []
    public var skipped: [(PlannedAction, String)] = []
    public var ok: Bool { failed.isEmpty && skipped.isEmpty }

    public init() {}
}
