import DiskFormats
import Foundation
import XenAPI

extension SimPool {
    static let cbtBlock = Int64(DiskStore.cbtBlock)

    func bitmapBytes(for size: Int64) -> Int { Int((size + Self.cbtBlock - 1) / Self.cbtBlock + 7) / 8 }

    func sm(forSR sr: String) -> [String: XenValue]? {
        let type = db.field(sr, "type")?.stringValue ?? ""
        return db.find("SM") { $0["type"]?.stringValue == type }.first.flatMap { db.get($0, "SM") }
    }

    // MARK: create / destroy / snapshot / clone

    func createVDI(_ c: SimCall, _ r: [String: XenValue]) throws -> String {
        guard let sr = r["SR"]?.stringValue, db.get(sr, "SR") != nil else {
            throw c.fail(XenAPIError.Code.handleInvalid, "SR", r["SR"]?.stringValue ?? "")
        }
        let type = r["type"]?.stringValue ?? "user"
        if type == "cbt_metadata" { throw c.fail(XenAPIError.Code.vdiIncompatibleType, "", "cbt_metadata") }
        guard let size = r["virtual_size"]?.intValue, size >= 0 else { throw c.fail("FIELD_TYPE_ERROR", "virtual_size") }
        try checkSRSpace(c, sr: sr, adding: size)
        var record = Templates.vdi(name: r["name_label"]?.stringValue ?? "", sr: sr, size: size, type: type)
        for key in ["name_description", "sharable", "read_only", "other_config", "sm_config", "xenstore_data", "tags"] {
            if let v = r[key] { record[key] = v }
        }
        let vdi = db.insert("VDI", record)
        let uuid = db.field(vdi, "uuid")!.stringValue!
        db.set(vdi, "location", .string(uuid))
        try disks.create(uuid: uuid, size: size)
        db.addToSet(sr, "VDIs", vdi)
        refreshSRUsage(sr)
        return vdi
    }

    func destroyVDI(_ c: SimCall, _ vdi: String) throws {
        let f = db.get(vdi, "VDI")!
        for vbd in f["VBDs"]?.stringArray ?? [] where db.field(vbd, "currently_attached")?.boolValue == true {
            throw c.fail(XenAPIError.Code.vdiInUse, vdi, "destroy")
        }
        for vbd in f["VBDs"]?.stringArray ?? [] {
            if let vm = db.field(vbd, "VM")?.stringValue { db.removeFromSet(vm, "VBDs", vbd) }
            db.remove(vbd)
        }
        mergeCBTLogOnDelete(vdi)
        if let of = f["snapshot_of"]?.stringValue, db.get(of) != nil { db.removeFromSet(of, "snapshots", vdi) }
        let sr = f["SR"]?.stringValue ?? ""
        db.removeFromSet(sr, "VDIs", vdi)
        disks.remove(uuid: f["uuid"]?.stringValue ?? "")
        db.remove(vdi)
        refreshSRUsage(sr)
    }

    func snapshotVDI(_ c: SimCall, _ vdi: String) throws -> String {
        let f = db.get(vdi, "VDI")!
        let type = f["type"]?.stringValue ?? "user"
        if type == "cbt_metadata" { throw c.fail(XenAPIError.Code.vdiIncompatibleType, vdi, "cbt_metadata") }
        if f["on_boot"]?.stringValue == "reset" { throw c.fail(XenAPIError.Code.vdiOnBootModeIncompatible) }
        let sr = f["SR"]?.stringValue ?? ""
        let size = f["virtual_size"]?.intValue ?? 0
        try checkSRSpace(c, sr: sr, adding: 0)
        var record = Templates.vdi(name: f["name_label"]?.stringValue ?? "", sr: sr, size: size, type: type)
        for key in ["name_description", "sharable", "other_config", "xenstore_data", "on_boot", "allow_caching", "tags", "sm_config"] {
            record[key] = f[key]
        }
        record["is_a_snapshot"] = true
        record["snapshot_of"] = .string(vdi)
        record["snapshot_time"] = Templates.now()
        record["read_only"] = false
        let snap = db.insert("VDI", record)
        let uuid = db.field(snap, "uuid")!.stringValue!
        db.set(snap, "location", .string(uuid))
        try disks.copy(from: f["uuid"]?.stringValue ?? "", to: uuid, size: size)
        db.set(snap, "physical_utilisation", .int(disks.allocated(uuid)))
        db.addToSet(vdi, "snapshots", snap)
        db.addToSet(sr, "VDIs", snap)
        // The source's CBT log becomes the snapshot's; the source starts a fresh one.
        if var log = db.cbt[vdi], f["cbt_enabled"]?.boolValue == true {
            db.cbt[snap] = CBTLog(chain: log.chain, bitmap: log.bitmap, previous: log.previous)
            log.bitmap = [UInt8](repeating: 0, count: bitmapBytes(for: size))
            log.previous = snap
            db.cbt[vdi] = log
            db.set(snap, "cbt_enabled", true)
        }
        refreshSRUsage(sr)
        return snap
    }

    func cloneVDI(_ c: SimCall, _ vdi: String, sr target: String?) throws -> String {
        let f = db.get(vdi, "VDI")!
        if f["type"]?.stringValue == "cbt_metadata" { throw c.fail(XenAPIError.Code.vdiIncompatibleType, vdi, "cbt_metadata") }
        let sr = target ?? f["SR"]?.stringValue ?? ""
        let size = f["virtual_size"]?.intValue ?? 0
        try checkSRSpace(c, sr: sr, adding: size)
        var record = Templates.vdi(name: f["name_label"]?.stringValue ?? "", sr: sr, size: size, type: f["type"]?.stringValue ?? "user")
        record["other_config"] = f["other_config"]
        record["tags"] = f["tags"]
        let copy = db.insert("VDI", record)
        let uuid = db.field(copy, "uuid")!.stringValue!
        db.set(copy, "location", .string(uuid))
        try disks.copy(from: f["uuid"]?.stringValue ?? "", to: uuid, size: size)
        db.set(copy, "physical_utilisation", .int(disks.allocated(uuid)))
        db.addToSet(sr, "VDIs", copy)
        refreshSRUsage(sr)
        return copy
    }

    func refreshSRUsage(_ sr: String) {
        let total = (db.field(sr, "VDIs")?.stringArray ?? []).reduce(Int64(0)) { $0 + (db.field($1, "physical_utilisation")?.intValue ?? 0) }
        let virtual = (db.field(sr, "VDIs")?.stringArray ?? []).reduce(Int64(0)) { $0 + (db.field($1, "virtual_size")?.intValue ?? 0) }
        db.set(sr, "physical_utilisation", .int(total))
        db.set(sr, "virtual_allocation", .int(virtual))
    }

    // MARK: CBT

    private func checkCBTCapable(_ c: SimCall, _ vdi: String) throws {
        let f = db.get(vdi, "VDI")!
        if f["is_a_snapshot"]?.boolValue == true { throw c.fail(XenAPIError.Code.operationNotAllowed, "VDI is a snapshot: \(vdi)") }
        let type = f["type"]?.stringValue ?? ""
        guard type == "user" || type == "system" else { throw c.fail(XenAPIError.Code.vdiIncompatibleType, vdi, type) }
        if f["on_boot"]?.stringValue == "reset" { throw c.fail(XenAPIError.Code.vdiOnBootModeIncompatible) }
        let sr = f["SR"]?.stringValue ?? ""
        guard sm(forSR: sr)?["features"]?.structValue?["VDI_CONFIG_CBT"] != nil else {
            throw c.fail(XenAPIError.Code.srOperationNotSupported, sr)
        }
    }

    func setCBT(_ c: SimCall, _ vdi: String, on: Bool) throws {
        try checkCBTCapable(c, vdi)
        if on {
            let restricted = db.refs("pool").first.flatMap { db.field($0, "restrictions")?.structValue?["restrict_cbt"]?.stringValue }
            if restricted != "false" { throw c.fail(XenAPIError.Code.licenceRestriction, "CBT") }
            guard db.field(vdi, "cbt_enabled")?.boolValue != true else { return }
            let size = db.field(vdi, "virtual_size")?.intValue ?? 0
            db.cbt[vdi] = CBTLog(chain: Database.newUUID(), bitmap: [UInt8](repeating: 0, count: bitmapBytes(for: size)), previous: nil)
            db.set(vdi, "cbt_enabled", true)
        } else {
            guard db.field(vdi, "cbt_enabled")?.boolValue == true else { return }
            // The chain ends here: later snapshots cannot be compared with earlier ones.
            db.cbt[vdi] = nil
            db.set(vdi, "cbt_enabled", false)
        }
    }

    /// OR of every CBT log after `from` up to and including `to`, base64 of the MSB-first bitmap.
    func listChangedBlocks(_ c: SimCall, from: String, to: String) throws -> String {
        func backend(_ reason: String) -> XenAPIError {
            XenAPIError(code: XenAPIError.Code.cbtChangedBlocksError, parameters: ["", "CBTChangedBlocksError", reason])
        }
        guard db.field(from, "cbt_enabled")?.boolValue == true, let fromLog = db.cbt[from] else {
            throw c.fail(XenAPIError.Code.vdiNoCBTMetadata, from)
        }
        guard db.field(to, "cbt_enabled")?.boolValue == true, let toLog = db.cbt[to] else {
            throw c.fail(XenAPIError.Code.vdiNoCBTMetadata, to)
        }
        if from == to { throw backend("Source and target VDI are same") }
        for vbd in db.field(to, "VBDs")?.stringArray ?? [] where db.field(vbd, "currently_attached")?.boolValue == true {
            let vm = db.field(vbd, "VM")?.stringValue ?? ""
            if db.field(vm, "is_a_snapshot")?.boolValue != true { throw c.fail(XenAPIError.Code.vdiInUse, to, "list_changed_blocks") }
        }
        guard fromLog.chain == toLog.chain else { throw backend("Source and target VDI are unrelated") }
        var acc = [UInt8](repeating: 0, count: toLog.bitmap.count)
        var current: String? = to
        var steps = 0
        while let ref = current, ref != from {
            guard let log = db.cbt[ref], steps < 100_000 else { throw backend("Source and target VDI are unrelated") }
            if log.bitmap.count > acc.count { acc += [UInt8](repeating: 0, count: log.bitmap.count - acc.count) }
            for i in 0..<log.bitmap.count { acc[i] |= log.bitmap[i] }
            current = log.previous
            steps += 1
        }
        guard current == from else { throw backend("Source and target VDI are unrelated") }
        return Data(acc).base64EncodedString()
    }

    /// SM folds the log of a deleted snapshot into its successor, so the chain stays whole.
    func mergeCBTLogOnDelete(_ vdi: String) {
        guard let log = db.cbt[vdi] else { return }
        db.cbt[vdi] = nil
        for (ref, var other) in db.cbt where other.previous == vdi {
            if other.bitmap.count < log.bitmap.count { other.bitmap += [UInt8](repeating: 0, count: log.bitmap.count - other.bitmap.count) }
            for i in 0..<log.bitmap.count { other.bitmap[i] |= log.bitmap[i] }
            other.previous = log.previous
            db.cbt[ref] = other
        }
    }

    /// Marks blocks of a live VDI changed (guest writes).
    func markChanged(_ vdi: String, blocks: [Int]) {
        guard var log = db.cbt[vdi], db.field(vdi, "cbt_enabled")?.boolValue == true else { return }
        for b in blocks where b / 8 < log.bitmap.count { log.bitmap[b / 8] |= 0x80 >> UInt8(b % 8) }
        db.cbt[vdi] = log
        db.markDirty()
    }

    func dataDestroy(_ c: SimCall, _ vdi: String) throws {
        let f = db.get(vdi, "VDI")!
        if f["type"]?.stringValue == "cbt_metadata" { return }
        guard f["is_a_snapshot"]?.boolValue == true else { throw c.fail(XenAPIError.Code.operationNotAllowed, "VDI is not a snapshot: \(vdi)") }
        guard f["cbt_enabled"]?.boolValue == true else { throw c.fail(XenAPIError.Code.vdiNoCBTMetadata, vdi) }
        let oldType = f["type"] ?? "user"
        db.set(vdi, "type", "cbt_metadata")
        // xapi waits up to 4 s for every VBD of the VDI to be destroyed.
        let deadline = Date().addingTimeInterval(4)
        while !(db.field(vdi, "VBDs")?.stringArray ?? []).isEmpty {
            if !db.lock.wait(until: deadline) {
                if !(db.field(vdi, "VBDs")?.stringArray ?? []).isEmpty {
                    db.set(vdi, "type", oldType)
                    throw c.fail(XenAPIError.Code.vdiInUse, vdi, "data_destroy")
                }
            }
        }
        let uuid = f["uuid"]?.stringValue ?? ""
        disks.remove(uuid: uuid)
        db.set(vdi, "physical_utilisation", 0)
        refreshSRUsage(f["SR"]?.stringValue ?? "")
    }

    // MARK: NBD

    func nbdInfo(_ c: SimCall, _ vdi: String) throws -> XenValue {
        let f = db.get(vdi, "VDI")!
        if f["type"]?.stringValue == "cbt_metadata" { throw c.fail(XenAPIError.Code.vdiIncompatibleType, vdi, "cbt_metadata") }
        let sr = f["SR"]?.stringValue ?? ""
        let hostsSeeingSR = (db.field(sr, "PBDs")?.stringArray ?? []).filter { db.field($0, "currently_attached")?.boolValue == true }
            .compactMap { db.field($0, "host")?.stringValue }
        let nbdNetworks = Set(db.refs("network").filter {
            let p = db.field($0, "purpose")?.stringArray ?? []
            return p.contains("nbd") || p.contains("insecure_nbd")
        })
        var out: [XenValue] = []
        for hostRef in hostsSeeingSR {
            guard let h = host(ref: hostRef) else { continue }
            for pif in db.field(hostRef, "PIFs")?.stringArray ?? [] {
                guard let net = db.field(pif, "network")?.stringValue, nbdNetworks.contains(net),
                    db.field(pif, "currently_attached")?.boolValue == true, let ip = db.field(pif, "IP")?.stringValue, !ip.isEmpty
                else { continue }
                out.append([
                    "exportname": .string("/\(f["uuid"]?.stringValue ?? "")?session_id=\(c.session)"),
                    "address": .string(ip), "port": 10809, "cert": .string(h.pemCertificate), "subject": .string(h.name),
                ])
            }
        }
        return .array(out)
    }

    // MARK: VBD

    func createVBD(_ c: SimCall, _ r: [String: XenValue]) throws -> String {
        guard let vm = r["VM"]?.stringValue, db.get(vm, "VM") != nil else {
            throw c.fail(XenAPIError.Code.handleInvalid, "VM", r["VM"]?.stringValue ?? "")
        }
        let vdi = r["VDI"]?.stringValue ?? "OpaqueRef:NULL"
        let type = r["type"]?.stringValue ?? "Disk"
        let mode = r["mode"]?.stringValue ?? "RW"
        let empty = r["empty"]?.boolValue ?? false
        if vdi != "OpaqueRef:NULL" {
            guard let v = db.get(vdi, "VDI") else { throw c.fail(XenAPIError.Code.handleInvalid, "VDI", vdi) }
            let vt = v["type"]?.stringValue ?? ""
            if ["ha_statefile", "redo_log", "cbt_metadata"].contains(vt) { throw c.fail(XenAPIError.Code.vdiIncompatibleType, vdi, vt) }
            if mode == "RW", v["read_only"]?.boolValue == true { throw c.fail(XenAPIError.Code.vdiReadonly, vdi) }
        } else if !empty || type != "CD" {
            throw c.fail("VBD_NOT_REMOVABLE_MEDIA", "in constructor")
        }
        if type == "CD", mode != "RO" { throw c.fail("VBD_CDS_MUST_BE_READONLY") }
        let used = Set((db.field(vm, "VBDs")?.stringArray ?? []).compactMap { db.field($0, "userdevice")?.stringValue })
        var userdevice = r["userdevice"]?.stringValue ?? "autodetect"
        if userdevice == "autodetect" {
            userdevice = String((0...254).first { !used.contains(String($0)) } ?? 0)
        } else if used.contains(userdevice) {
            throw c.fail("DEVICE_ALREADY_EXISTS", userdevice)
        }
        var record = Templates.vbd(vm: vm, vdi: vdi, userdevice: userdevice, type: type, mode: mode, bootable: r["bootable"]?.boolValue ?? false)
        record["other_config"] = r["other_config"] ?? [:]
        record["unpluggable"] = r["unpluggable"] ?? true
        record["qos_algorithm_type"] = r["qos_algorithm_type"] ?? ""
        record["qos_algorithm_params"] = r["qos_algorithm_params"] ?? [:]
        let vbd = db.insert("VBD", record)
        db.addToSet(vm, "VBDs", vbd)
        if vdi != "OpaqueRef:NULL" { db.addToSet(vdi, "VBDs", vbd) }
        return vbd
    }

    func destroyVBD(_ c: SimCall, _ vbd: String) throws {
        if db.field(vbd, "currently_attached")?.boolValue == true {
            throw c.fail("DEVICE_ALREADY_ATTACHED", vbd)
        }
        if let vm = db.field(vbd, "VM")?.stringValue { db.removeFromSet(vm, "VBDs", vbd) }
        if let vdi = db.field(vbd, "VDI")?.stringValue, db.get(vdi) != nil { db.removeFromSet(vdi, "VBDs", vbd) }
        db.remove(vbd)
    }

    func plugVBD(_ c: SimCall, _ vbd: String, plug: Bool) throws {
        let attached = db.field(vbd, "currently_attached")?.boolValue == true
        let vm = db.field(vbd, "VM")?.stringValue ?? ""
        if plug {
            if attached { throw c.fail(XenAPIError.Code.deviceAlreadyAttached, vbd) }
            let power = db.field(vm, "power_state")?.stringValue ?? "Halted"
            if power != "Running" { throw c.fail(XenAPIError.Code.vmBadPowerState, vm, "running", power.lowercased()) }
            let n = Int(db.field(vbd, "userdevice")?.stringValue ?? "") ?? 0
            db.update(vbd) { f in
                f["currently_attached"] = true
                f["device"] = .string("xvd" + String(UnicodeScalar(UInt8(97 + n % 26))))
            }
            applianceVBDChanged(vbd, plugged: true)
        } else {
            if !attached { throw c.fail(XenAPIError.Code.deviceAlreadyDetached, vbd) }
            applianceVBDChanged(vbd, plugged: false)
            db.set(vbd, "currently_attached", false)
        }
    }

    // MARK: guest activity

    /// Overwrites a share of a VDI's 64 KiB blocks with new random data (uniformly spread, or
    /// in clustered runs), marking them for CBT. Returns the blocks written.
    func guestWrite(vdi: String, percent: Double, clustered: Bool, seed: UInt64) throws -> [Int] {
        let (uuid, size): (String, Int64) = db.withLock {
            (db.field(vdi, "uuid")?.stringValue ?? "", db.field(vdi, "virtual_size")?.intValue ?? 0)
        }
        let blocks = Int((size + Self.cbtBlock - 1) / Self.cbtBlock)
        var rng = SplitMix64(state: seed)
        let count = max(1, Int(Double(blocks) * percent / 100))
        var chosen = Set<Int>()
        if clustered {
            while chosen.count < min(count, blocks) {
                let start = Int(rng.next() % UInt64(blocks))
                let run = 1 + Int(rng.next() % 32)
                for b in start..<min(blocks, start + run) where chosen.count < count { chosen.insert(b) }
            }
        } else {
            while chosen.count < min(count, blocks) { chosen.insert(Int(rng.next() % UInt64(blocks))) }
        }
        let sorted = chosen.sorted()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: DiskStore.cbtBlock, alignment: 8)
        defer { buffer.deallocate() }
        for b in sorted {
            BlockPatterns.random(&rng, into: buffer)
            let offset = Int64(b) * Self.cbtBlock
            let length = Int(min(Self.cbtBlock, size - offset))
            try disks.write(uuid, offset: offset, UnsafeRawBufferPointer(rebasing: buffer[0..<length]))
        }
        db.withLock {
            markChanged(vdi, blocks: sorted)
            db.set(vdi, "physical_utilisation", .int(disks.allocated(uuid)))
        }
        return sorted
    }
}
