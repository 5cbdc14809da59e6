import Foundation

/// Where backups are kept: a local directory of content-addressed chunks.
public struct RepositorySpec: ResourceSpec, Hashable {
    public static let kind = ResourceKind.repository

    /// Absolute path (relative paths are resolved against the YAML file's directory).
    public var path: String
    public var compression: Compression
    public var encryption: Encryption?
    public var chunkSize: ByteSize

    public struct Encryption: Sendable, Hashable, Encodable {
        public var keyFile: String

        static let shape = ObjectShape(
            path: "spec.encryption",
            fields: [
                FieldInfo("keyFile", .text, required: true,
                          "File holding the repository key (created by `haven repo init --encrypt`); never the key itself."),
            ])
    }

    public static let defaultChunkSize = ByteSize.kibibytes(64)
    public static let minimumChunkSize = ByteSize.kibibytes(64)
    public static let maximumChunkSize = ByteSize.mebibytes(64)

    public static let shape = ObjectShape(
        path: "spec",
        fields: [
            FieldInfo("path", .text, required: true, "Directory of the repository."),
            FieldInfo("compression", .compression, default: "zstd:3", "none, zstd, or zstd:N with N from 1 to 22."),
            FieldInfo("encryption", .object(Encryption.shape), "AES-256-GCM encryption of every chunk and index."),
            FieldInfo("chunkSize", .size, default: defaultChunkSize.description,
                      "Size of the chunks disks are cut into: a power of two from 64Ki to 64Mi."),
        ])
}

extension RepositorySpec {
    init(_ r: MappingReader) {
        path = r.string("path").map { r.context.resolvePath($0.value) } ?? ""
        compression = r.parsed("compression", as: "compression", code: .invalidValue, Compression.parse) ?? .zstd(level: 3)
        encryption = r.mapping("encryption").map { e in
            Encryption(keyFile: e.string("keyFile").map { r.context.resolvePath($0.value) } ?? "")
        }
        chunkSize = Self.defaultChunkSize
        if let size = r.size("chunkSize") {
            let b = size.bytes
            // Chunks must be whole CBT blocks (64 KiB) so a changed block never straddles two chunks.
            if b < Self.minimumChunkSize.bytes || b > Self.maximumChunkSize.bytes || b & (b - 1) != 0 {
                r.context.sink.error(
                    .invalidSize, at: r.valueLocation("chunkSize"),
                    "'spec.chunkSize' must be a power of two from 64Ki to 64Mi, found \(size)")
            } else {
                chunkSize = size
            }
        }
    }
}
