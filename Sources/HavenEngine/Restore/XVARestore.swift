import DiskFormats
import Foundation
import HavenData
import XenAPI

/// A backup version made with `method: xva` stores the whole-VM export as one stream under the
/// key `xva`. It is an archive, not a disk: these helpers say so, list the disks inside it, and
/// take one disk out of it.
public enum XVAArchive {
    /// The key under which BackupRun stores the archive.
    public static let key = "xva"

    /// The archive stream of a version, if the version is an XVA.
    public static func stream(of manifest: BackupManifest) -> DiskVersion? {
        manifest.disks.first { $0.key == key }
    }

    /// One disk inside an XVA, as its ova.xml describes it.
    public struct Disk: Sendable, Equatable {
        /// The VBD's userdevice ("0", "1", …): the same key a non-XVA version uses for the disk.
        public var key: String
        /// The export-local id of its VDI (`Ref:3`), which names its chunk members.
        public var id: String
        public var name: String
        public var size: Int64
    }

    /// The VM's disks in an `ova.xml`, in userdevice order. CDs and VBDs without a streamed VDI
    /// are not disks of the archive (xapi streams neither).
    public static func disks(ovaXML: [UInt8]) throws -> [Disk] {
        let value: XenValue
        do {
            value = try XMLRPC.parseValue(String(decoding: ovaXML, as: UTF8.self))
        } catch {
            throw EngineError(.restore, "ova.xml", "the archive's ova.xml is not an XML-RPC value: \(error)")
        }
        var byID: [String: (cls: String, snapshot: [String: XenValue])] = [:]
        var order: [String] = []
        for o in value["objects"]?.arrayValue ?? [] {
            guard let id = o["id"]?.stringValue, let cls = o["class"]?.stringValue else { continue }
            byID[id] = (cls, o["snapshot"]?.structValue ?? [:])
            order.append(id)
        }
        // An export of one VM holds one VM object (a metadata export with snapshots may hold
        // more; the VM that is not a snapshot is the one whose disks are streamed).
        let vms = order.filter { byID[$0]?.cls == "VM" }
        guard let vm = vms.first(where: { byID[$0]?.snapshot["is_a_snapshot"]?.boolValue != true }) ?? vms.first else {
            throw EngineError(.restore, "ova.xml", "the archive's ova.xml describes no VM")
        }
        var disks: [Disk] = []
        for id in order {
            guard let (cls, vbd) = byID[id], cls == "VBD", vbd["VM"]?.stringValue == vm, vbd["type"]?.stringValue != "CD",
                  let vdiID = vbd["VDI"]?.stringValue, let (vdiClass, vdi) = byID[vdiID], vdiClass == "VDI"
            else { continue }
            disks.append(Disk(key: vbd["userdevice"]?.stringValue ?? "", id: vdiID, name: vdi["name_label"]?.stringValue ?? "",
                              size: vdi["virtual_size"]?.intValue ?? 0))
        }
        return disks.sorted { (Int($0.key) ?? Int.max, $0.key) < (Int($1.key) ?? Int.max, $1.key) }
    }

    /// Picks a disk the way `restore --disk` does for every version: by key (userdevice) first,
    /// else by position in userdevice order.
    public static func select(_ wanted: String, from disks: [Disk]) -> Disk? {
        disks.first { $0.key == wanted } ?? Int(wanted).flatMap { $0 >= 0 && $0 < disks.count ? disks[$0] : nil }
    }

    public enum Format: String, Sendable { case raw, vhd }

    public struct Extracted: Sendable {
        public var disk: Disk
        public var chunks: Int
        public var verifiedChunks: Int
    }

    /// Writes disk `wanted` of an XVA version to `path` as a sparse raw image or a dynamic VHD.
    /// The archive is read once, front to back; nothing but the output file is written.
    public static func extract(_ manifest: BackupManifest, disk wanted: String, repository: BackupRepository, to path: String,
                               format: Format) throws -> Extracted {
        guard let archive = stream(of: manifest) else {
            throw EngineError(.restore, manifest.id, "version \(manifest.id) is not an XVA backup")
        }
        // Written under a temporary name beside the target, made durable and renamed once
        // complete, as every restore to a file: a run killed or failing halfway never leaves a
        // partial image under the target's name (the kill sweep found one).
        var result: Extracted?
        try DiskRestore.writeReplacing(path) { fd, regular in
            switch format {
            case .raw:
                result = try extractRaw(archive, wanted: wanted, versionID: manifest.id, repository: repository, into: fd, sizing: regular, label: path)
            case .vhd:
                // The VHD writer wants to know the blocks with data before it writes the first one,
                // and the archive names them only as it goes: take the disk out as a sparse raw file
                // beside the target first, then write the VHD from it.
                let url = URL(fileURLWithPath: path)
                let staging = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).haven-xva-staging-\(getpid())").path
                let sfd = open(staging, O_RDWR | O_CREAT | O_TRUNC, 0o600)
                guard sfd >= 0 else { throw DataError(.io, staging, String(cString: strerror(errno))) }
                defer {
                    close(sfd)
                    unlink(staging)
                }
                let r = try extractRaw(archive, wanted: wanted, versionID: manifest.id, repository: repository, into: sfd, sizing: true, label: staging)
                try rawToVHD(sfd, label: staging, size: r.disk.size, into: fd, target: path)
                result = r
            }
        }
        return result!
    }

    /// Writes the disk onto `fd` (sized first when `sizing`: a regular file; a device has its size).
    static func extractRaw(_ archive: DiskVersion, wanted: String, versionID: String, repository: BackupRepository, into fd: Int32, sizing: Bool,
                           label path: String) throws -> Extracted {
        var chosen: Disk?
        let extractor = XVA.DiskExtractor(choose: { ova in
            let disks = try disks(ovaXML: ova)
            guard let d = select(wanted, from: disks) else {
                throw EngineError(.restore, versionID, "the XVA of version \(versionID) has no disk \(wanted) (disks by userdevice: \(disks.map(\.key).joined(separator: ", ")))")
            }
            guard !sizing || ftruncate(fd, off_t(d.size)) == 0 else { throw DataError(.io, path, "cannot size the file: \(String(cString: strerror(errno)))") }
            chosen = d
            return XVA.Target(id: d.id, size: d.size)
        }, write: { offset, bytes in
            // Keep the image sparse: all-zero 64 KiB blocks stay holes (the file was sized empty).
            let block = 65_536
            var off = 0
            while off < bytes.count {
                let len = min(block, bytes.count - off)
                let piece = UnsafeRawBufferPointer(rebasing: bytes[off..<(off + len)])
                if !piece.allSatisfy({ $0 == 0 }) {
                    guard writeFully(fd, piece, at: offset + Int64(off)) else {
                        throw DataError(.io, path, "write failed: \(String(cString: strerror(errno)))")
                    }
                }
                off += len
            }
        })
        do {
            try DiskRestore(repository: repository).toRawStream(archive) { try extractor.feed($0) }
            let summary = try extractor.finish()
            guard let chosen else { throw EngineError(.restore, versionID, "the XVA of version \(versionID) names no disks") }
            return Extracted(disk: chosen, chunks: summary.chunks, verifiedChunks: summary.verifiedChunks)
        } catch let e as XVA.FormatError {
            throw EngineError(.restore, versionID, "the XVA of version \(versionID) is damaged: \(e.message)")
        } catch let e as Tar.FormatError {
            throw EngineError(.restore, versionID, "the XVA of version \(versionID) is damaged: \(e)")
        }
    }

    static func rawToVHD(_ input: Int32, label raw: String, size: Int64, into fd: Int32, target path: String) throws {
        let blockSize = VHD.blockSize
        let blocks = Int((size + Int64(blockSize) - 1) / Int64(blockSize))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: blockSize, alignment: 4096)
        defer { buffer.deallocate() }
        func readBlock(_ i: Int, into out: UnsafeMutableRawBufferPointer) throws {
            let start = Int64(i) * Int64(blockSize)
            let length = Int(min(Int64(blockSize), size - start))
            out.initializeMemory(as: UInt8.self, repeating: 0)
            var done = 0
            while done < length {
                let n = pread(input, out.baseAddress! + done, length - done, off_t(start) + off_t(done))
                guard n > 0 else { throw DataError(.io, raw, "read failed at \(start + Int64(done))") }
                done += n
            }
        }
        var present: [Int] = []
        for i in 0..<blocks {
            try readBlock(i, into: buffer)
            if !UnsafeRawBufferPointer(buffer).allSatisfy({ $0 == 0 }) { present.append(i) }
        }
        var position: Int64 = 0
        try VHD.write(size: UInt64(size), presentBlocks: present, readBlock: { i, out in try readBlock(i, into: out) }, emit: { bytes in
            guard writeFully(fd, bytes, at: position) else { throw DataError(.io, path, "write failed: \(String(cString: strerror(errno)))") }
            position += Int64(bytes.count)
        })
    }
}

private func writeFully(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64) -> Bool {
    var done = 0
    while done < bytes.count {
        let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return false }
        done += n
    }
    return true
}

extension XVAArchive {
    /// The head of an XVA stream (its first member, `ova.xml`) with every `haven.*` key taken out
    /// of the other_config maps it describes; `replaced` is how many bytes of the original stream
    /// it stands for. An archive whose first member is not a readable `ova.xml` passes unchanged.
    public static func unmarkedHead(read: (UnsafeMutableRawBufferPointer) throws -> Int) throws -> (bytes: [UInt8], replaced: Int64) {
        var head: [UInt8] = []
        func fill(_ n: Int) throws -> Bool {
            while head.count < n {
                var buf = [UInt8](repeating: 0, count: min(1 << 16, n - head.count))
                let got = try buf.withUnsafeMutableBytes { try read($0) }
                if got == 0 { return false }
                head += buf[0..<got]
            }
            return true
        }
        guard try fill(512) else { return (head, Int64(head.count)) }
        guard let member = try? Tar.parseHeader(Array(head[0..<512])), member.name == "ova.xml", member.size < 64 << 20 else {
            return (head, Int64(head.count))
        }
        let padded = member.size + Tar.padding(for: member.size)
        guard try fill(512 + padded) else { return (head, Int64(head.count)) }
        let xml = String(decoding: head[512..<(512 + member.size)], as: UTF8.self)
        let stripped = Array(stripHavenMarks(xml).utf8)
        if stripped.count == member.size { return (head, Int64(head.count)) }
        let body = stripped + [UInt8](repeating: 0, count: Tar.padding(for: stripped.count))
        return (Tar.header(name: "ova.xml", size: stripped.count) + body, Int64(512 + padded))
    }

    /// `<member><name>haven.…</name><value>…</value></member>` taken out (ova.xml is XML-RPC-like).
    static func stripHavenMarks(_ xml: String) -> String {
        guard let re = try? NSRegularExpression(pattern: "<member>\\s*<name>haven\\.[^<]*</name>\\s*<value>(?:(?!</value>).)*</value>\\s*</member>",
                                                options: [.dotMatchesLineSeparators]) else { return xml }
        return re.stringByReplacingMatches(in: xml, range: NSRange(xml.startIndex..., in: xml), withTemplate: "")
    }
}

/// Serves `prefix` first, then what `rest` reads.
final class PrefixedReader: @unchecked Sendable {
    // @unchecked: one upload reads it, sequentially, from one thread at a time.
    let prefix: [UInt8]
    var offset = 0
    let rest: (UnsafeMutableRawBufferPointer) throws -> Int

    init(prefix: [UInt8], rest: @escaping (UnsafeMutableRawBufferPointer) throws -> Int) {
        self.prefix = prefix
        self.rest = rest
    }

    func read(into out: UnsafeMutableRawBufferPointer) throws -> Int {
        if offset < prefix.count {
            let n = min(out.count, prefix.count - offset)
            prefix.withUnsafeBytes { out.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: n) }
            offset += n
            return n
        }
        return try rest(out)
    }
}
