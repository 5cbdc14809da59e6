import CrashPoints
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
        m.registerMigration("v6-appliances") { db in
            try db.create(table: "appliance") { t in
                t.column("pool", .text).notNull()
                t.column("uuid", .text).notNull()
                t.column("name", .text).notNull()
                t.column("appliancePool", .text).notNull()
                t.column("staticAddress", .text).notNull()
                t.column("pin", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.primaryKey(["pool", "uuid"])
            }
            try db.create(table: "applianceLease") { t in
                t.column("pool", .text).notNull()
                t.column("uuid", .text).notNull()
                t.column("holder", .text).notNull()
                t.column("since", .datetime).notNull()
                t.primaryKey(["pool", "uuid"])
            }
        }
        m.registerMigration("v7-anchor-kind") { db in
            try db.alter(table: "anchor") { t in t.add(column: "kind", .text).notNull().defaults(to: AnchorKind.cbt.rawValue) }
        }
        m.registerMigration("v8-suspensions") { db in
            try db.create(table: "suspension") { t in
                t.primaryKey("policy", .text)
                t.column("at", .datetime).notNull()
                t.column("by", .text).notNull()
            }
        }
        m.registerMigration("v9-run-action-start") { db in
            try db.alter(table: "runAction") { t in t.add(column: "startedAt", .datetime) }
        }
        return m
    }

    /// One write transaction; once it is committed, a crash point (`HAVEN_CRASH_AT`).
    func write<T>(_ label: String, _ body: (Database) throws -> T) throws -> T {
        let result = try db.write(body)
        CrashPoints.hit("catalog \(label)")
        return result
    }

    public func view() throws -> CatalogView {
        try db.read { db in
            CatalogView(
                backups: try BackupRecord.fetchAll(db), anchors: try Anchor.fetchAll(db), inventory: try OwnedObject.fetchAll(db),
                cbtMarks: try CBTMark.fetchAll(db), replicas: try ReplicaRecord.fetchAll(db), intents: try SnapshotIntent.fetchAll(db),
                appliances: try ApplianceRecord.fetchAll(db), leases: try ApplianceLeaseRecord.fetchAll(db),
                suspensions: try Suspension.fetchAll(db))
        }
    }

    public func record(_ backup: BackupRecord) throws { try write("record backup") { try backup.save($0) } }
    public func forget(backup id: String) throws { _ = try write("forget backup") { try BackupRecord.deleteOne($0, key: id) } }
    public func setAnchor(_ anchor: Anchor) throws { try write("set anchor") { try anchor.save($0) } }
    public func removeAnchor(pool: String, snapshotVDI: String) throws {
        _ = try write("remove anchor") { try Anchor.filter(Column("pool") == pool && Column("snapshotVDI") == snapshotVDI).deleteAll($0) }
    }
    public func own(_ object: OwnedObject) throws { try write("own") { try object.save($0) } }
    public func disown(pool: String, uuid: String) throws {
        _ = try write("disown") { try OwnedObject.filter(Column("pool") == pool && Column("uuid") == uuid).deleteAll($0) }
    }
    public func markCBT(_ mark: CBTMark) throws { try write("mark CBT") { try mark.save($0) } }
    public func unmarkCBT(pool: String, vdiUUID: String) throws {
        _ = try write("unmark CBT") { try CBTMark.filter(Column("pool") == pool && Column("vdiUUID") == vdiUUID).deleteAll($0) }
    }

    public func recordIntent(_ i: SnapshotIntent) throws { try write("record intent") { try i.save($0) } }
    public func clearIntent(pool: String, name: String) throws {
        _ = try write("clear intent") { try SnapshotIntent.filter(Column("pool") == pool && Column("name") == name).deleteAll($0) }
    }

    public func setReplica(_ r: ReplicaRecord) throws { try write("set replica") { try r.save($0) } }
    public func removeReplica(policy: String, sourcePool: String, sourceVM: String) throws {
        _ = try write("remove replica") { try ReplicaRecord.filter(Column("policy") == policy && Column("sourcePool") == sourcePool && Column("sourceVM") == sourceVM).deleteAll($0) }
    }

    public func setAppliance(_ a: ApplianceRecord) throws { try db.write { try a.save($0) } }
    public func removeAppliance(pool: String, uuid: String) throws {
        _ = try db.write { db in
            try ApplianceRecord.filter(Column("pool") == pool && Column("uuid") == uuid).deleteAll(db)
            try ApplianceLeaseRecord.filter(Column("pool") == pool && Column("uuid") == uuid).deleteAll(db)
        }
    }

    /// Takes the lease of an appliance: false when someone holds it already.
    public func lease(_ l: ApplianceLeaseRecord) throws -> Bool {
        try db.write { db in
            if try ApplianceLeaseRecord.filter(Column("pool") == l.pool && Column("uuid") == l.uuid).fetchCount(db) > 0 { return false }
            try l.insert(db)
            return true
        }
    }
    public func release(pool: String, uuid: String, holder: String) throws {
        _ = try db.write {
            try ApplianceLeaseRecord.filter(Column("pool") == pool && Column("uuid") == uuid && Column("holder") == holder).deleteAll($0)
        }
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
        try write("replace all") { db in
            try BackupRecord.deleteAll(db)
            try Anchor.deleteAll(db)
            try OwnedObject.deleteAll(db)
            try CBTMark.deleteAll(db)
            for b in view.backups { try b.insert(db) }
            for a in view.anchors { try a.insert(db) }
            for o in view.inventory { try o.insert(db) }
            for c in view.cbtMarks { try c.insert(db) }
            if !view.appliances.isEmpty {
                try ApplianceRecord.deleteAll(db)
                for a in view.appliances { try a.insert(db) }
            }
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
extension AnchorKind: DatabaseValueConvertible {}
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
extension ApplianceRecord: FetchableRecord, PersistableRecord, TableRecord {
    public static var databaseTableName: String { "appliance" }
}
extension ApplianceLeaseRecord: FetchableRecord, PersistableRecord, TableRecord {
    public static var databaseTableName: String { "applianceLease" }
}
extension Suspension: FetchableRecord, PersistableRecord, TableRecord {
    public static var databaseTableName: String { "suspension" }
}
