import Foundation
import GRDB

/// One `apply` or `backup now` run, as `haven history` shows it.
public struct RunRecord: Sendable, Codable, Hashable, FetchableRecord, MutablePersistableRecord, TableRecord {
    public static var databaseTableName: String { "run" }
    public var id: Int64?
    public var startedAt: Date
    public var endedAt: Date?
    /// The command line, e.g. `apply` or `backup now daily --vm web`.
    public var command: String
    /// `running` (never finished: the process died), `succeeded`, `failed`, `cancelled` (not
    /// approved), `no-changes`, `error` (nothing executed: a lock, a stale plan…).
    public var result: String
    public var message: String

    public init(id: Int64? = nil, startedAt: Date, endedAt: Date? = nil, command: String, result: String = "running", message: String = "") {
        self.id = id
        self.startedAt = startedAt
        self.endedAt = endedAt
        self.command = command
        self.result = result
        self.message = message
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}

/// What became of one action of a run.
public struct RunActionRecord: Sendable, Codable, Hashable, FetchableRecord, PersistableRecord, TableRecord {
    public static var databaseTableName: String { "runAction" }
    public var runID: Int64
    public var actionKey: String
    public var kind: String
    public var pool: String
    public var vm: String?
    public var vmUUID: String?
    public var policy: String?
    /// `succeeded`, `failed` or `skipped`.
    public var result: String
    public var message: String
    public var backupID: String?
    public var bytesRead: Int64?
    public var bytesStored: Int64?
    /// When the action started (nil in records written before haven kept it).
    public var startedAt: Date?
    /// When it finished.
    public var at: Date

    public init(runID: Int64, actionKey: String, kind: String, pool: String, vm: String?, vmUUID: String?, policy: String?, result: String,
                message: String, backupID: String? = nil, bytesRead: Int64? = nil, bytesStored: Int64? = nil, startedAt: Date? = nil, at: Date) {
        self.startedAt = startedAt
        self.runID = runID
        self.actionKey = actionKey
        self.kind = kind
        self.pool = pool
        self.vm = vm
        self.vmUUID = vmUUID
        self.policy = policy
        self.result = result
        self.message = message
        self.backupID = backupID
        self.bytesRead = bytesRead
        self.bytesStored = bytesStored
        self.at = at
    }
}

enum RunHistory {
    static func migrate(_ db: Database) throws {
        try db.create(table: "run") { t in
            t.autoIncrementedPrimaryKey("id")
            t.column("startedAt", .datetime).notNull().indexed()
            t.column("endedAt", .datetime)
            t.column("command", .text).notNull()
            t.column("result", .text).notNull()
            t.column("message", .text).notNull().defaults(to: "")
        }
        try db.create(table: "runAction") { t in
            t.column("runID", .integer).notNull().indexed().references("run", onDelete: .cascade)
            t.column("actionKey", .text).notNull()
            t.column("kind", .text).notNull()
            t.column("pool", .text).notNull()
            t.column("vm", .text)
            t.column("vmUUID", .text).indexed()
            t.column("policy", .text)
            t.column("result", .text).notNull()
            t.column("message", .text).notNull()
            t.column("backupID", .text)
            t.column("bytesRead", .integer)
            t.column("bytesStored", .integer)
            t.column("at", .datetime).notNull()
            t.primaryKey(["runID", "actionKey"])
        }
    }
}

extension Catalog {
    /// Records the start of a run; returns its id.
    public func startRun(command: String, at: Date) throws -> Int64 {
        try write("start run") { db in
            var r = RunRecord(startedAt: at, command: command)
            try r.insert(db)
            return r.id ?? db.lastInsertedRowID
        }
    }

    public func recordRunAction(_ a: RunActionRecord) throws { try write("record run action") { try a.save($0) } }

    public func finishRun(_ id: Int64, at: Date, result: String, message: String = "") throws {
        try write("finish run") { db in
            guard var r = try RunRecord.fetchOne(db, key: id) else { return }
            r.endedAt = at
            r.result = result
            r.message = message
            try r.update(db)
        }
    }

    /// Runs, newest first: with `vm` (name or uuid) or `policy`, only runs that acted on them.
    public func runs(vm: String? = nil, policy: String? = nil, since: Date? = nil) throws -> [RunRecord] {
        try db.read { db in
            var q = RunRecord.all()
            if let since { q = q.filter(Column("startedAt") >= since) }
            var runs = try q.order(Column("startedAt").desc, Column("id").desc).fetchAll(db)
            if vm != nil || policy != nil {
                var a = RunActionRecord.all()
                if let vm { a = a.filter(Column("vm") == vm || Column("vmUUID") == vm.lowercased()) }
                if let policy { a = a.filter(Column("policy") == policy) }
                let ids = Set(try a.select(Column("runID"), as: Int64.self).fetchAll(db))
                runs = runs.filter { $0.id.map(ids.contains) ?? false }
            }
            return runs
        }
    }

    public func run(_ id: Int64) throws -> RunRecord? { try db.read { try RunRecord.fetchOne($0, key: id) } }

    public func runActions(_ id: Int64) throws -> [RunActionRecord] {
        try db.read { try RunActionRecord.filter(Column("runID") == id).order(Column("at"), Column("actionKey")).fetchAll($0) }
    }

    /// Backups that succeeded and whose start was recorded, oldest first (the status page's
    /// chart of durations over time): at most `limit`, the newest ones.
    public func backupTimings(limit: Int = 500) throws -> [RunActionRecord] {
        try db.read { db in
            try RunActionRecord.filter(Column("kind") == "backup" && Column("result") == "succeeded" && Column("startedAt") != nil)
                .order(Column("at").desc).limit(limit).fetchAll(db).reversed()
        }
    }

    /// Per VM and policy (key `pool \0 policy \0 vmUUID`), the last backup action that ran or was skipped.
    public func lastBackupAttempts() throws -> [String: RunActionRecord] {
        try db.read { db in
            var out: [String: RunActionRecord] = [:]
            for a in try RunActionRecord.filter(Column("kind") == "backup").order(Column("at"), Column("runID")).fetchAll(db) {
                out["\(a.pool)\u{0}\(a.policy ?? "")\u{0}\(a.vmUUID ?? "")"] = a
            }
            return out
        }
    }
}
