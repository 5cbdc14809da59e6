import DiskFormats
import Foundation
import XenAPI

extension SimPool {
    private func refuse(_ res: HTTPServerResponse, _ status: Int, task: String?, _ error: XenAPIError) {
        if let task { finishTask(task, .failure(error)) }
        var headers: [(String, String)] = []
        if let task { headers.append(("task-id", task)) }
        res.send(status, Array("\(error)".utf8), contentType: "text/plain", extra: headers)
    }

    // MARK: /export_raw_vdi

    func exportRawVDI(_ req: HTTPServerRequest, _ res: HTTPServerResponse, host: SimHost) {
        guard let session = httpSession(req, host: host) else {
            res.send(401, Array("unauthorised".utf8), contentType: "text/plain")
            return
        }
        let task = httpTask(req, session: session, label: "export_raw_vdi")
        guard let vdi = resolve("VDI", req.query["vdi"]) else {
            refuse(res, 404, task: task, XenAPIError(code: XenAPIError.Code.handleInvalid, parameters: ["VDI", req.query["vdi"] ?? ""]))
            return
        }
        let format = req.query["format"] ?? "raw"
        guard format == "raw" || format == "vhd" else {
            refuse(res, 404, task: task, XenAPIError(code: "INTERNAL_ERROR", parameters: ["Unknown format \(format)"]))
            return
        }
        let (uuid, size, type): (String, Int64, String) = db.withLock {
            (db.field(vdi, "uuid")?.stringValue ?? "", db.field(vdi, "virtual_size")?.intValue ?? 0, db.field(vdi, "type")?.stringValue ?? "")
        }
        if type == "cbt_metadata" {
            refuse(res, 500, task: task, XenAPIError(code: XenAPIError.Code.vdiIncompatibleType, parameters: [vdi, "cbt_metadata"]))
            return
        }
        var baseUUID: String?
        if let b = req.query["base"] {
            guard let base = resolve("VDI", b) else {
                refuse(res, 404, task: task, XenAPIError(code: XenAPIError.Code.handleInvalid, parameters: ["VDI", b]))
                return
            }
            baseUUID = db.withLock { db.field(base, "uuid")?.stringValue }
        }
        res.head(200, headers: [
            ("task-id", task), ("Content-Type", format == "vhd" ? "application/vhd" : "application/octet-stream"),
            ("Content-Disposition", "attachment; filename=\"\(uuid).\(format)\""),
        ], contentLength: nil)
        do {
            if format == "raw" {
                try streamRaw(uuid: uuid, baseUUID: baseUUID, size: size, res)
            } else {
                try streamVHD(uuid: uuid, baseUUID: baseUUID, size: size, res)
            }
            finishTask(task, res.failed ? .failure(XenAPIError(code: "CLIENT_ERROR", parameters: ["connection closed"])) : .success(""))
        } catch {
            finishTask(task, .failure(XenAPIError(code: "VDI_IO_ERROR", parameters: ["\(error)"])))
        }
    }

    /// raw with a base: full length, unchanged regions as zeros (xapi does the same; unusable as a delta).
    private func streamRaw(uuid: String, baseUUID: String?, size: Int64, _ res: HTTPServerResponse) throws {
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        let baseBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer {
            buffer.deallocate()
            baseBuffer.deallocate()
        }
        var offset: Int64 = 0
        while offset < size, !res.failed {
            let n = Int(min(Int64(chunk), size - offset))
            let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
            _ = disks.read(uuid, offset: offset, into: view)
            if let baseUUID {
                let bview = UnsafeMutableRawBufferPointer(rebasing: baseBuffer[0..<n])
                _ = disks.read(baseUUID, offset: offset, into: bview)
                if memcmp(view.baseAddress!, bview.baseAddress!, n) == 0 { view.initializeMemory(as: UInt8.self, repeating: 0) }
            }
            res.write(UnsafeRawBufferPointer(view))
            offset += Int64(n)
        }
    }

    /// VHD: only 2 MiB blocks that hold data (or, with a base, differ from it).
    private func streamVHD(uuid: String, baseUUID: String?, size: Int64, _ res: HTTPServerResponse) throws {
        let bs = VHD.blockSize
        let blocks = Int((size + Int64(bs) - 1) / Int64(bs))
        var present: [Int] = []
        let a = UnsafeMutableRawBufferPointer.allocate(byteCount: bs, alignment: 4096)
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: bs, alignment: 4096)
        defer {
            a.deallocate()
            b.deallocate()
        }
        for i in 0..<blocks {
            let offset = Int64(i) * Int64(bs)
            let n = Int(min(Int64(bs), size - offset))
            if let baseUUID {
                _ = disks.read(uuid, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: a[0..<n]))
                _ = disks.read(baseUUID, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: b[0..<n]))
                if memcmp(a.baseAddress!, b.baseAddress!, n) != 0 { present.append(i) }
            } else if disks.regionHasData(uuid, offset: offset, length: n) {
                present.append(i)
            }
        }
        try VHD.write(size: UInt64(size), presentBlocks: present, readBlock: { i, buf in
            let offset = Int64(i) * Int64(bs)
            let n = Int(min(Int64(bs), size - offset))
            _ = disks.read(uuid, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: buf[0..<n]))
        }, emit: { bytes in
            res.write(bytes)
            if res.failed { throw SimError("client went away") }
        })
    }

    // MARK: /import_raw_vdi

    func importRawVDI(_ req: HTTPServerRequest, _ res: HTTPServerResponse, host: SimHost) {
        guard let session = httpSession(req, host: host) else {
            res.send(401, Array("unauthorised".utf8), contentType: "text/plain")
            return
        }
        let task = httpTask(req, session: session, label: "import_raw_vdi")
        if req.headers["transfer-encoding"] != nil {
            refuse(res, 403, task: task, XenAPIError(code: "IMPORT_ERROR_CANNOT_HANDLE_CHUNKED"))
            res.markClose()
            return
        }
        let format = req.query["format"] ?? "raw"
        guard format == "raw" || format == "vhd" else {
            refuse(res, 404, task: task, XenAPIError(code: "INTERNAL_ERROR", parameters: ["Unknown format \(format)"]))
            return
        }
        var vdi = resolve("VDI", req.query["vdi"])
        if vdi == nil {
            // Without a VDI: raw with a length onto an SR creates "Imported VDI".
            guard format == "raw", let length = req.contentLength, let sr = resolve("SR", req.query["sr_id"] ?? req.query["sr_uuid"]) else {
                refuse(res, 400, task: task, XenAPIError(code: XenAPIError.Code.handleInvalid, parameters: ["VDI", req.query["vdi"] ?? ""]))
                return
            }
            let call = SimCall(pool: self, host: host, method: "VDI.create", params: [], session: session)
            vdi = try? db.withLock {
                try createVDI(call, ["SR": .string(sr), "virtual_size": .int(Int64(length)), "type": "user", "name_label": "Imported VDI",
                                     "sharable": false, "read_only": false, "other_config": [:]])
            }
        }
        guard let vdi else {
            refuse(res, 500, task: task, XenAPIError(code: XenAPIError.Code.srFull))
            return
        }
        let (uuid, size, type, attached): (String, Int64, String, Bool) = db.withLock {
            let attached = (db.field(vdi, "VBDs")?.stringArray ?? []).contains { db.field($0, "currently_attached")?.boolValue == true }
            return (db.field(vdi, "uuid")?.stringValue ?? "", db.field(vdi, "virtual_size")?.intValue ?? 0,
                    db.field(vdi, "type")?.stringValue ?? "", attached)
        }
        if type == "cbt_metadata" || attached {
            refuse(res, 500, task: task, XenAPIError(code: XenAPIError.Code.vdiInUse, parameters: [vdi, "import"]))
            return
        }
        req.cutAfter = uploadCut()
        var written = Set<Int>()
        // What reached the disk is on it whether or not the import completes, and CBT saw it
        // (tapdisk logs every write): a cut import leaves its first blocks written and logged.
        defer {
            db.withLock {
                markChanged(vdi, blocks: written.sorted())
                db.set(vdi, "physical_utilisation", .int(disks.allocated(uuid)))
            }
        }
        do {
            let writer = try disks.writer(uuid)
            defer { writer.close() }
            if format == "raw" {
                var offset: Int64 = 0
                var buffer = [UInt8](repeating: 0, count: 1 << 20)
                while true {
                    let n = buffer.withUnsafeMutableBytes { req.readBody(into: $0) }
                    if n == 0 { break }
                    guard offset + Int64(n) <= size else { throw SimError("stream longer than the VDI (\(size) bytes)") }
                    try buffer.withUnsafeBytes { try writer.write(offset: offset, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                    for blk in Int(offset / Self.cbtBlock)...Int((offset + Int64(n) - 1) / Self.cbtBlock) { written.insert(blk) }
                    offset += Int64(n)
                }
            } else {
                let vhdSize = try VHD.read(from: { req.readBody(into: $0) }, write: { offset, bytes in
                    guard offset + UInt64(bytes.count) <= UInt64(size) else { throw SimError("VHD data beyond the VDI's size") }
                    try writer.write(offset: Int64(offset), bytes)
                    for blk in Int(Int64(offset) / Self.cbtBlock)...Int((Int64(offset) + Int64(bytes.count) - 1) / Self.cbtBlock) { written.insert(blk) }
                })
                if vhdSize > UInt64(size) { throw SimError("VHD of \(vhdSize) bytes is larger than the VDI") }
            }
            try writer.flush()
            if req.wasCut { throw SimError("the upload was cut (upload-cut fault)") }
            finishTask(task, .success(.string(vdi)))
            res.send(200, [], contentType: "text/plain", extra: [("task-id", task)])
        } catch {
            if req.wasCut {
                // The link dropped: the task fails, and no answer reaches the client.
                finishTask(task, .failure(XenAPIError(code: "VDI_IO_ERROR", parameters: ["\(error)"])))
                res.abort()
                return
            }
            refuse(res, 500, task: task, XenAPIError(code: "VDI_IO_ERROR", parameters: ["\(error)"]))
            res.markClose()
        }
    }
}
