import Foundation

/// Reading XVA archives, xapi's whole-VM export: a ustar stream whose first member is `ova.xml`
/// (the VM's metadata as one XML-RPC value), then each disk as members `Ref:<n>/NNNNNNNN` of at
/// most 1 MiB — NNNNNNNN is the chunk index (offset / 1 MiB), strictly increasing per disk; all-zero
/// chunks are left out except the first and the last — each followed by a checksum member:
/// `.xxhash` (XXH64 as 16 hex digits, xapi since 2019) or `.checksum` (SHA-1, older exports).
public enum XVA {
    public static let chunkSize = 1 << 20
    public static let metadataName = "ova.xml"

    public struct FormatError: Error, Sendable, CustomStringConvertible {
        public var message: String
        public init(_ message: String) { self.message = message }
        public var description: String { "XVA: \(message)" }
    }

    /// The name of a disk member: `Ref:3/00000012` (data) or `Ref:3/00000012.xxhash` (its checksum).
    public struct ChunkName: Equatable, Sendable {
        public enum Kind: Sendable, Equatable { case data, xxhash, sha1 }
        public var disk: String
        public var index: Int
        public var kind: Kind

        public init?(_ name: String) {
            guard let slash = name.lastIndex(of: "/") else { return nil }
            disk = String(name[..<slash])
            var rest = Substring(name[name.index(after: slash)...])
            kind = .data
            if rest.hasSuffix(".xxhash") {
                kind = .xxhash
                rest = rest.dropLast(7)
            } else if rest.hasSuffix(".checksum") {
                kind = .sha1
                rest = rest.dropLast(9)
            }
            guard !disk.isEmpty, rest.count == 8, rest.allSatisfy(\.isASCII), let i = Int(rest), i >= 0 else { return nil }
            index = i
        }
    }

    /// Which disk of the archive to take, decided once `ova.xml` has been read.
    public struct Target: Sendable {
        /// The export-local id of the VDI (`Ref:3`).
        public var id: String
        public var size: Int64
        public init(id: String, size: Int64) {
            self.id = id
            self.size = size
        }
    }

    public struct Summary: Sendable {
        public var target: Target
        /// Data members of the target disk (the rest of the disk is zeros).
        public var chunks: Int
        /// Chunks whose XXH64 was checked; SHA-1 checksums of old exports are not (no SHA-1 here).
        public var verifiedChunks: Int
    }

    /// Pulls one disk out of an archive fed front to back in pieces of any size: hands each chunk
    /// to `write(offset, bytes)` and checks it against its checksum member. Regions without a
    /// chunk are zeros; the caller's target (a sparse file) is expected to read as zeros there.
    /// Not thread-safe: one producer feeds it.
    public final class DiskExtractor {
        private let choose: ([UInt8]) throws -> Target
        private let write: (Int64, UnsafeRawBufferPointer) throws -> Void
        private var parser = Tar.StreamParser()
        private var sawMetadata = false
        private var metadata: [UInt8] = []
        private var target: Target?
        /// What the member being read is.
        private enum Current { case metadata, chunk(ChunkName), checksum(ChunkName), ignored }
        private var current: Current = .ignored
        private var buffer: [UInt8] = []
        private var lastIndex = -1
        private var awaitingChecksum: (index: Int, xxhash: String)?
        private var chunks = 0
        private var verified = 0

        public init(choose: @escaping ([UInt8]) throws -> Target, write: @escaping (Int64, UnsafeRawBufferPointer) throws -> Void) {
            self.choose = choose
            self.write = write
            buffer.reserveCapacity(XVA.chunkSize)
        }

        public func feed(_ bytes: UnsafeRawBufferPointer) throws {
            try parser.feed(bytes) { event in try handle(event) }
        }

        /// Call after the last byte: checks that the archive was whole.
        public func finish() throws -> Summary {
            guard parser.atMemberBoundary else {
                throw FormatError("the archive ends inside a member (premature end of the stream)")
            }
            guard let target else { throw FormatError("no \(XVA.metadataName) in the archive") }
            return Summary(target: target, chunks: chunks, verifiedChunks: verified)
        }

        private func handle(_ event: Tar.StreamParser.Event) throws {
            switch event {
            case .begin(let member):
                buffer.removeAll(keepingCapacity: true)
                guard sawMetadata else {
                    guard member.name == XVA.metadataName else {
                        throw FormatError("the first member is '\(member.name)', expected \(XVA.metadataName)")
                    }
                    sawMetadata = true
                    current = .metadata
                    return
                }
                guard let name = ChunkName(member.name) else { throw FormatError("unexpected member '\(member.name)'") }
                guard name.disk == target?.id else {
                    current = .ignored
                    return
                }
                if name.kind == .data {
                    guard member.size <= XVA.chunkSize else { throw FormatError("\(member.name) has \(member.size) bytes, more than a chunk") }
                    guard name.index > lastIndex else { throw FormatError("\(member.name): chunk indices must increase") }
                    current = .chunk(name)
                } else {
                    guard awaitingChecksum?.index == name.index else { throw FormatError("\(member.name) follows no chunk of that index") }
                    current = .checksum(name)
                }
            case .data(let bytes):
                switch current {
                case .metadata, .chunk, .checksum: buffer.append(contentsOf: bytes)
                case .ignored: break
                }
            case .end(let member):
                switch current {
                case .metadata:
                    target = try choose(buffer)
                case .chunk(let name):
                    guard let target else { return }
                    let offset = Int64(name.index) * Int64(XVA.chunkSize)
                    guard offset + Int64(buffer.count) <= target.size else {
                        throw FormatError("\(member.name) lies beyond the disk's \(target.size) bytes")
                    }
                    let hash = buffer.withUnsafeBytes { XXHash64.hex($0) }
                    try buffer.withUnsafeBytes { try write(offset, $0) }
                    lastIndex = name.index
                    awaitingChecksum = (name.index, hash)
                    chunks += 1
                case .checksum(let name):
                    if name.kind == .xxhash, let expected = awaitingChecksum?.xxhash {
                        let stored = String(decoding: buffer, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).uppercased()
                        guard stored == expected else {
                            throw FormatError("checksum mismatch in \(member.name): the archive says \(stored), the chunk hashes to \(expected)")
                        }
                        verified += 1
                    }
                    awaitingChecksum = nil
                case .ignored: break
                }
                current = .ignored
            }
        }
    }
}

extension Tar {
    /// Parses a tar stream fed in pieces of any size (push-style), so that it can sit behind a
    /// producer that emits an archive front to back without buffering it.
    public struct StreamParser: Sendable {
        public enum Event {
            case begin(Member)
            case data(UnsafeRawBufferPointer)
            case end(Member)
        }

        private var header: [UInt8] = []
        private var member: Member?
        private var remaining = 0
        private var padding = 0
        /// The end-of-archive (zero) block has been read; anything after it is ignored.
        public private(set) var ended = false

        public init() {}

        /// True between members: no header or member data is half-read.
        public var atMemberBoundary: Bool { ended || (member == nil && header.isEmpty) }

        public mutating func feed(_ bytes: UnsafeRawBufferPointer, _ handle: (Event) throws -> Void) throws {
            var p = 0
            while p < bytes.count, !ended {
                if let m = member {
                    if remaining > 0 {
                        let n = min(remaining, bytes.count - p)
                        try handle(.data(UnsafeRawBufferPointer(rebasing: bytes[p..<(p + n)])))
                        remaining -= n
                        p += n
                        if remaining == 0 { try handle(.end(m)) }
                    } else {
                        let n = min(padding, bytes.count - p)
                        padding -= n
                        p += n
                    }
                    if remaining == 0 && padding == 0 { member = nil }
                    continue
                }
                let n = min(512 - header.count, bytes.count - p)
                header.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[p..<(p + n)]))
                p += n
                guard header.count == 512 else { continue }
                let parsed = try Tar.parseHeader(header)
                header.removeAll(keepingCapacity: true)
                guard let m = parsed else {
                    ended = true
                    break
                }
                try handle(.begin(m))
                remaining = m.size
                padding = Tar.padding(for: m.size)
                if m.size == 0 { try handle(.end(m)) }
                member = remaining == 0 && padding == 0 ? nil : m
            }
        }
    }
}
