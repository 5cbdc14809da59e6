import Foundation
import HavenSpec

extension Engine {
    /// An encrypted Repository whose key file is missing fails the plan: `apply` never creates a
    /// repository key on its own (a key nobody kept a copy of makes every backup unreadable).
    /// Only repositories a policy in scope writes to are checked, and only while they do not
    /// exist yet: an existing encrypted repository without its key fails when it is opened.
    func checkRepositoryKeys(scope: Set<String>?) throws {
        let used = Set(desired.backupPolicies.filter { scope?.contains($0.name) ?? true }.filter { !$0.spec.suspend }.map(\.spec.repository.value))
        for r in desired.repositories where used.contains(r.name) {
            guard let keyFile = r.spec.encryption?.keyFile, !FileManager.default.fileExists(atPath: keyFile) else { continue }
            let exists = FileManager.default.fileExists(atPath: URL(fileURLWithPath: r.spec.path).appendingPathComponent("config.json").path)
            throw EngineError(.notFound, "Repository/\(r.name)",
                              "Repository \(r.name): the key file \(keyFile) does not exist; "
                                + (exists ? "the repository is encrypted and cannot be opened without it"
                                          : "haven never creates a repository key on its own: run `haven repo init --encrypt --key-file \(keyFile) \(r.spec.path)` and keep a copy of the key"))
        }
    }
}
