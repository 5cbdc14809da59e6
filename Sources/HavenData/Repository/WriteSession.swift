import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The repository lock, held shared for a whole backup: from its first chunk lookup (the
/// deduplication that makes it rely on chunks already there) until its manifest is committed,
/// across every disk. `haven repo gc` takes the lock exclusively, so while a session is open it
/// cannot delete a chunk the backup found and did not store again (issue 13).
///
/// Use:
/// ```
/// let session = try repository.beginWriteSession(lockTimeout: 600)
/// defer { session.close() }
/// let disks = try requests.map { try DiskBackup(repository: repository).run($0) }
/// try session.commit(manifest)   // the manifest naming `disks`
/// ```
/// or `try repository.withWriteSession { session in … }`.
///
/// Nesting is safe: `DiskBackup.run` takes no lock, and `commit` and `withLock(exclusive: false)`
/// take the lock shared on a descriptor of their own, which a held shared lock never blocks (flock
/// locks belong to open descriptors, so shared holders in one process do not conflict). Only an
/// exclusive lock (`collectGarbage`) waits for the session, even from the same process: do not run
/// GC while holding a session without a timeout.
///
/// A session may be passed between threads (the lock belongs to the descriptor, not a thread);
/// `close` releases it and is idempotent; a session dropped without `close` releases it too.
public final class WriteSession: Sendable {
    public let repository: BackupRepository
    /// The locked descriptor; nil once closed.
    private let descriptor: Mutex<Int32?>

    init(repository: BackupRepository, descriptor: Int32) {
        self.repository = repository
        self.descriptor = Mutex(descriptor)
    }

    deinit { close() }

    public var isOpen: Bool { descriptor.withLock { $0 != nil } }

    /// Commits the version (see `BackupRepository.commit`) while the session still holds the
    /// lock; refuses once the session is closed, since GC may have run since.
    public func commit(_ manifest: BackupManifest) throws {
        guard isOpen else {
            throw DataError(.locked, repository.root.path, "the write session was closed before committing \(manifest.id)")
        }
        try repository.commit(manifest)
    }

    /// Releases the lock. What this process was still writing is sealed first (best effort), so
    /// that nothing of it lingers in `tmp/` where GC would sweep it once old.
    public func close() {
        guard let fd = descriptor.withLock({ fd -> Int32? in
            defer { fd = nil }
            return fd
        }) else { return }
        try? repository.sealPacks()
        flock(fd, LOCK_UN)
        Glibc.close(fd)
    }
}

extension BackupRepository {
    /// Opens a write session: takes the lock shared (waiting up to `lockTimeout` seconds for a
    /// running GC, forever when nil), then re-reads the pack indexes if a GC since this
    /// repository was opened removed packs it knows of, so that deduplication never relies on a
    /// chunk that is gone.
    public func beginWriteSession(lockTimeout: Double? = nil) throws -> WriteSession {
        let fd = try lockDescriptor(exclusive: false, timeout: lockTimeout)
        let session = WriteSession(repository: self, descriptor: fd)
        try index.reloadIfPacksVanished()
        try index.compactIfLarge()
        return session
    }

    /// Runs `body` inside a write session, closed when `body` returns or throws.
    public func withWriteSession<T>(lockTimeout: Double? = nil, _ body: (WriteSession) throws -> T) throws -> T {
        let session = try beginWriteSession(lockTimeout: lockTimeout)
        defer { session.close() }
        return try body(session)
    }
}
