import Foundation
import HavenCore
import HavenSpec
import Synchronization

/// The configuration the daemon acts on: the last one that loaded without errors, and what is
/// wrong with the newest files when they do not. A broken edit never replaces a good
/// configuration: the daemon keeps protecting the pools with the last good one and says why it
/// ignores the new one (file:line:column, on `/readyz`, the status page and `haven_config_valid`).
public final class ConfigStore: Sendable {
    public struct Snapshot: Sendable {
        /// The last good configuration; nil until one loaded.
        public var desired: DesiredState?
        /// Bumped each time a good configuration replaces the previous one.
        public var generation = 0
        public var loadedAt: Date?
        /// The newest files' errors (`file:line:col: error: …`); empty when they loaded.
        public var errors: [String] = []
        public var errorAt: Date?
        /// `haven suspend`'s overlay as last read from the catalog.
        public var suspensions: [Suspension] = []
        /// Bumped each time the suspensions change.
        public var suspensionGeneration = 0
    }

    private let state = Mutex(Snapshot())
    public let directory: String

    public init(directory: String) { self.directory = directory }

    public var snapshot: Snapshot { state.withLock { $0 } }

    /// Records the catalog's suspensions; true when they differ from the last ones read.
    @discardableResult
    public func setSuspensions(_ list: [Suspension]) -> Bool {
        state.withLock { s in
            guard s.suspensions.map(\.policy) != list.map(\.policy) else { return false }
            s.suspensions = list
            s.suspensionGeneration += 1
            return true
        }
    }

    /// Loads the files now; returns true when a new good configuration replaced the current one.
    @discardableResult
    public func reload(now: Date = Date()) -> (changed: Bool, diagnostics: [SpecDiagnostic]) {
        let result = SpecLoader.load(path: directory)
        return state.withLock { s in
            if let desired = result.state {
                s.desired = desired
                s.generation += 1
                s.loadedAt = now
                s.errors = []
                s.errorAt = nil
                return (true, result.diagnostics)
            }
            s.errors = result.errors.map(\.description)
            s.errorAt = now
            return (false, result.diagnostics)
        }
    }
}

/// What the configuration files look like from outside: path, inode, size and modification time
/// of every YAML file, and where the directory resolves (git-sync swaps a symlink). Two equal
/// stamps mean nothing changed.
struct ConfigStamp: Equatable {
    var entries: [String]

    static func take(_ root: String) -> ConfigStamp {
        var entries = [URL(fileURLWithPath: root).resolvingSymlinksInPath().path]
        func walk(_ dir: String, depth: Int) {
            guard depth < 16, let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return }
            for name in names.sorted() where !name.hasPrefix(".") {
                let path = dir + "/" + name
                var st = stat()
                guard stat(path, &st) == 0 else { continue }
                if (st.st_mode & S_IFMT) == S_IFDIR {
                    walk(path, depth: depth + 1)
                } else if name.hasSuffix(".yaml") || name.hasSuffix(".yml") || name == ".havenignore" {
                    entries.append("\(path) \(st.st_ino) \(st.st_size) \(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)")
                }
            }
        }
        walk(root, depth: 0)
        return ConfigStamp(entries: entries)
    }
}
