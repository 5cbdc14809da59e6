import FuzzDriver
import Foundation
import HavenData

/// A repository's manifests and indexes, as an attacker with write access to the repository (or a
/// damaged disk) could leave them. The first byte picks what the rest is:
/// - 0: a manifest file (`manifests/<id>.json`), read, checked, listed, verified and — when small —
///   restored;
/// - 1: `u16 length | blob | manifest`: the blob is stored as a chunk and `@ROOT@` in the manifest
///   is replaced by its id, so the index pages restore walks are the fuzzer's;
/// - 2: a pack index (`index/<pack>.idx`), loaded by opening the repository, its chunks read.
@main enum Main {
    static func main() {
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, fuzz))
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    guard size >= 1 else { return 0 }
    let mode = data[0] % 3
    let body = Data(bytes: data + 1, count: size - 1)
    Scratch.shared.run(mode: mode, body: body)
    return 0
}

final class Scratch: @unchecked Sendable {
    // @unchecked: libFuzzer calls the target from one thread.
    static let shared = Scratch()
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("haven-fuzz-manifest-\(getpid())")
    var repo: BackupRepository!
    var uses = 0
    let id = "20260101T000000Z-fuzz"

    init() {
        atexit { try? FileManager.default.removeItem(at: Scratch.shared.root) }
        fresh()
    }

    /// A new repository every few thousand inputs: stored blobs would otherwise pile up.
    func fresh() {
        try? FileManager.default.removeItem(at: root)
        try! BackupRepository.initialize(at: root.path, chunkSize: 64 << 10, compression: "zstd:1")
        repo = try! BackupRepository.open(at: root.path)
        uses = 0
    }

    func run(mode: UInt8, body: Data) {
        uses += 1
        if uses > 2_000 { fresh() }
        let manifests = root.appendingPathComponent("manifests")
        switch mode {
        case 0:
            try? body.write(to: manifests.appendingPathComponent("\(id).json"))
            use()
        case 1:
            guard body.count >= 2 else { return }
            let n = Int(body[body.startIndex]) | Int(body[body.startIndex + 1]) << 8
            guard body.count >= 2 + n else { return }
            let blob = body.subdata(in: (body.startIndex + 2)..<(body.startIndex + 2 + n))
            let chunk = blob.withUnsafeBytes { repo.chunkID(of: $0) }
            _ = try? blob.withUnsafeBytes { try repo.putChunk(chunk, $0) }
            try? repo.sealPacks()
            let text = String(decoding: body.suffix(from: body.startIndex + 2 + n), as: UTF8.self).replacingOccurrences(of: "@ROOT@", with: chunk.hex)
            try? Data(text.utf8).write(to: manifests.appendingPathComponent("\(id).json"))
            use()
        default:
            let file = root.appendingPathComponent("index").appendingPathComponent("00000000000000000000000000fuzz00.idx")
            try? body.write(to: file)
            if let reopened = try? BackupRepository.open(at: root.path) {
                _ = try? reopened.verify()
            }
            try? FileManager.default.removeItem(at: file)
        }
        try? FileManager.default.removeItem(at: manifests.appendingPathComponent("\(id).json"))
    }

    /// What haven does with a version: read it, list, verify, restore.
    func use() {
        _ = try? repo.manifests()
        guard let m = try? repo.manifest(id) else { return }
        _ = try? repo.verify(versions: [id])
        let restore = DiskRestore(repository: repo, workers: 1)
        for disk in m.disks where disk.size <= 4 << 20 {
            _ = try? restore.toRawStream(disk) { _ in }
        }
    }
}
