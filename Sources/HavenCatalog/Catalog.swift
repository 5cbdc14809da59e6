import Foundation
import GRDB
import HavenCore

/// haven's SQLite catalog (GRDB, WAL): the backups it made, the CBT anchors, and its inventory
/// of the pool objects it created. An index, not the truth: `rebuild` recreates it from the
/// repositories' manifests and the pools' ownership marks.
public final class Catalog: Sendable {
    let db: DatabasePool

    public init(path: String) throws {
        var config = Configuration()
        config.busyMode = .timeout(30)
        db = try DatabasePool(path: path, configuration: config)
        try Self.migrator.migrate(db)
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.create(table: "backup") { t in
                t.primaryKey("id", .text)
                t.column("repository", .text).notNull()
                t.column("pool", .text).notNull()
                t.column("policy", .text).notNull()
                t.column("vmUUID", .text).notNull().indexed()
                t.column("vmName", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("kind", .text).notNull()
                t.column("size", .integer).notNull()
                t.column("storedBytes", .integer).notNull()
            }
            try db.create(table: "anchor") { t in
                t.column("pool", .text).notNull()
                t.column("policy", .text).notNull()
                t.column("vmUUID", .text).notNull()
                t.column("diskKey", .text).notNull()
                t.column("sourceVDI", .text).notNull()
                t.column("snapshotVM", .text).notNull()
                t.column("snapshotVDI", .text).notNull()
                t.column("backupID", .text).notNull()
                t.column("dataDestroyed", .boolean).notNull()
                t.primaryKey(["pool", "policy", "vmUUID", "diskKey"])
            }
            try db.create(table: "ownedObject") { t in
                t.column("pool", .text).notNull()
                t.column("cls", .text).notNull()
                t.column("uuid", .text).notNull()
                t.column("role", .text).notNull()
                t.column("policy", .text).notNull()
                t.column("vmUUID", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.primaryKey(["pool", "uuid"])
            }
            try db.create(table: "cbtMark") { t in
                t.column("pool", .text).notNull()
                t.column("vdiUUID", .text).notNull()
                t.column("policy", .text).notNull()
                t.primaryKey(["pool", "vdiUUID"])
            }
        }
        m.registerMigration("v2-backup-note") { db in
            try db.alter(table: "backup") { t in t.add(column: "note", .text).notNull().defaults(to: "") }
        }
        m.registerMigration("v3-run-history") { db in try RunHistory.migrate(db) }
        m.registerMigration("v4-replicas") { db in
            try db.create(table: "replica") { t in
                t.column("policy", .text).notNull()
                t.column("sourcePool", .text).notNull()
                t.column("sourceVM", .text).notNull()
                t.column("sourceName", .text).notNull()
                t.column("targetPool", .text).notNull()
                t.column("replicaUUID", .text).notNull()
                t.column("disks", .text).notNull()
                t.column("lastSync", .datetime)
                t.column("failedOverAt", .datetime)
                t.primaryKey(["policy", "sourcePool", "sourceVM"])
            }
        }
        m.registerMigration("v5-snapshot-intents") { db in
            try db.create(table: "snapshotIntent") { t in
                t.column("pool", .text).notNull()
                t.column("vmUUID", .text).notNull()
                t.column("policy", .text).notNull()
                t.column("name", .text).notNull()
                t.column("requestedAt", .datetime).notNull()
                t.primaryKey(["pool", "name"])
            }
        }
        m.registerMigration("v6-suspensions") { db in
            try db.create(table: "suspension") { t in
                t.primaryKey("policy", .text)
                t.column("at", .datetime).notNull()
                t.column("by", .text).notNull()
            }
        }
        m.registerMigration("v7-run-action-start") { db in
            try db.alter(table: "runAction") { t in t.add(column: "startedAt", .datetime) }
        }
        return m
    }

    public func view() throws -> CatalogView {
        try db.read { db in
            CatalogView(
                backups: try BackupRecord.fetchAll(db), anchors: try Anchor.fetchAll(db), inventory: try OwnedObject.fetchAll(db),
                cbtMarks: try CBTMark.fetchAll(db), replicas: try ReplicaRecord.fetchAll(db), intents: try SnapshotIntent.fetchAll(db),
                suspensions: try Suspension.fetchAll(db))
        }
    }

    public func record(_ backup: BackupRecord) throws { try db.write { try backup.save($0) } }
    public func forget(backup id: String) throws { _ = try db.write { try BackupRecord.deleteOne($0, key: id) } }
    public func setAnchor(_ anchor: Anchor) throws { try db.write { try anchor.save($0) } }
    public func removeAnchor(pool: String, snapshotVDI: String) throws {
        _ = try db.write { try Anchor.filter(Column("pool") == pool && Column("snapshotVDI") == snapshotVDI).deleteAll($0) }
    }
    public func own(_ object: OwnedObject) throws { try db.write { try object.save($0) } }
    public func disown(pool: String, uuid: String) throws {
        _ = try db.write { try OwnedObject.filter(Column("pool") == pool && Column("uuid") == uuid).deleteAll($0) }
    }
    public func markCBT(_ mark: CBTMark) throws { try db.write { try mark.save($0) } }
    public func unmarkCBT(pool: String, vdiUUID: String) throws {
        _ = try db.write { try CBTMark.filter(Column("pool") == pool && Column("vdiUUID") == vdiUUID).deleteAll($0) }
    }

    public func recordIntent(_ i: SnapshotIntent) throws { try db.write { try i.save($0) } }
    public func clearIntent(pool: String, name: String) throws {
        _ = try db.write { try SnapshotIntent.filter(Column("pool") == pool && Column("name") == name).deleteAll($0) }
    }

    public func setReplica(_ r: ReplicaRecord) throws { try db.write { try r.save($0) } }
    public func removeReplica(policy: String, sourcePool: String, sourceVM: String) throws {
        _ = try db.write { try ReplicaRecord.filter(Column("policy") == policy && Column("sourcePool") == sourcePool && Column("sourceVM") == sourceVM).deleteAll($0) }
    }

    /// `haven suspend`: the policy plans nothing until resumed (kept across restarts; a running
    /// daemon picks it up within seconds). Suspending twice keeps the first record.
    @discardableResult
    public func suspend(_ s: Suspension) throws -> Bool {
        try db.write { db in
            guard try Suspension.fetchOne(db, key: s.policy) == nil else { return false }
            try s.insert(db)
            return true
        }
    }

    /// `haven resume`: false when the policy was not suspended by `haven suspend`.
    @discardableResult
    public func resume(policy: String) throws -> Bool {
        try db.write { try Suspension.deleteOne($0, key: policy) }
    }

    public func suspensions() throws -> [Suspension] {
        try db.read { try Suspension.order(Column("policy")).fetchAll($0) }
    }

    /// Replaces everything (used by rebuild).
    public func replaceAll(with view: CatalogView) throws {
        try db.write { db in
            try BackupRecord.deleteAll(db)
            try Anchor.deleteAll(db)
            try OwnedObject.deleteAll(db)
            try CBTMark.deleteAll(db)
            for b in view.backups { try b.insert(db) }
            for a in view.anchors { try a.insert(db) }
            for o in view.inventory { try o.insert(db) }
            for c in view.cbtMarks { try c.insert(db) }
            // Replicas are not in any repository: a rebuild keeps what the catalog knew of them.
            if !view.replicas.isEmpty {
                try ReplicaRecord.deleteAll(db)
                for r in view.replicas { try r.insert(db) }
            }
        }
    }
}

extension BackupRecord: FetchableRecord, PersistableRecord, TableRecord {
    public static var databaseTableName: String { "backup" }
}
extension Anchor: FetchableRecord, PersistableRecord, TableRecord {
    public static var databaseTableName: String { "anchor" }
}
extension OwnedObject: FetchableRecord, PersistableRecord, TableRecord {
    public static var databaseTableName: String { "ownedObject" }
}
extension CBTMark: FetchableRecord, PersistableRecord, TableRecord {
    public static var databaseTableName: String { "cbtMark" }
}
extension ReplicaRecord: FetchableRecord, PersistableRecord, TableRecord {
    public static var databaseTableName: String { "replica" }
}
extension SnapshotIntent: FetchableRecord, PersistableRecord, TableRecord {
    public static var databaseTableName: String { "snapshotIntent" }
}
extension Suspension: FetchableRecord, PersistableRecord, TableRecord {
    public static var databaseTableName: String { "suspension" }
}
