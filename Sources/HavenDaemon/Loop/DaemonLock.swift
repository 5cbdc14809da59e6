import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// `state/locks/daemon.lock`: one active daemon per state directory. flock(2) is released by the
/// kernel when the holder dies (even by SIGKILL), so a standby takes over without any lease to
/// expire. The file names the holder for the one who waits.
final class DaemonLock: Sendable {
    let path: String
    /// The open descriptor holding the lock; closing it releases the lock.
    let fd: Int32
    private let released = Atomic<Bool>(false)

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    /// Takes the lock if it is free; nil when another process holds it.
    static func tryAcquire(stateDirectory: String) throws -> DaemonLock? {
        let dir = stateDirectory + "/locks"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/daemon.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw DaemonError(.state, "cannot open \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            return nil
        }
        ftruncate(fd, 0)
        let me = "haven daemon pid \(getpid())\n"
        _ = me.withCString { write(fd, $0, strlen($0)) }
        return DaemonLock(path: path, fd: fd)
    }

    /// Who holds the lock, as its file says.
    static func holder(stateDirectory: String) -> String {
        let text = try? String(contentsOfFile: stateDirectory + "/locks/daemon.lock", encoding: .utf8)
        return text?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
    }

    func release() {
        // Once: a second close(2) could close a descriptor number reused by another file.
        guard !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
        flock(fd, LOCK_UN)
        close(fd)
    }
}
