import Foundation
import HavenCatalog
import HavenEngine
import Logging
import ServiceLifecycle

/// Watches the configuration directory: compares the files' stamps every few seconds (no inotify:
/// a poll works the same on every filesystem, NFS and git-sync's symlink swaps included), reloads
/// on a change and rings the dispatcher when a new good configuration is in place. With
/// `--git-pull`, runs `git pull --ff-only` in the directory on that interval first. The same poll
/// reads the catalog's suspensions (`haven suspend|resume`), so they take effect without a restart.
struct ConfigWatcher: Service {
    let store: ConfigStore
    let options: DaemonOptions
    let wake: WakeSignal
    let metrics: DaemonMetrics
    let logger: Logger

    func run() async throws {
        // Nothing to finish on shutdown: stop at once.
        try await cancelWhenGracefulShutdown { await watch() }
    }

    func watch() async {
        var stamp = ConfigStamp.take(store.directory)
        var lastPull = ContinuousClock.now
        var catalog: Catalog?
        var warned = false
        while !Task.isCancelled {
            try? await Task.sleep(for: options.configPollInterval)
            if Task.isCancelled { break }
            do {
                if catalog == nil { catalog = try StateDirectory(path: options.statePath).catalog() }
                if let list = try catalog?.suspensions(), store.setSuspensions(list) {
                    logger.info("suspensions changed", metadata: ["suspended": "\(list.map(\.policy))"])
                    wake.fire(.suspensionsChanged)
                }
                warned = false
            } catch {
                if !warned { logger.warning("cannot read the suspensions from the catalog", metadata: ["error": "\(error)"]) }
                warned = true
            }
            if let every = options.gitPullInterval, ContinuousClock.now - lastPull >= every {
                lastPull = .now
                await GitPull.run(in: store.directory, logger: logger, metrics: metrics)
            }
            let now = ConfigStamp.take(store.directory)
            guard now != stamp else { continue }
            stamp = now
            reload(store: store, metrics: metrics, logger: logger, wake: wake)
        }
    }
}

/// Loads the configuration, logs its diagnostics one per line (file:line:col), counts the
/// outcome and wakes the loop when a new good configuration took over.
func reload(store: ConfigStore, metrics: DaemonMetrics, logger: Logger, wake: WakeSignal?) {
    let (changed, diagnostics) = store.reload()
    for d in diagnostics {
        let line = Logger.Message(stringLiteral: d.description)
        if d.severity == .error { logger.error(line) } else { logger.warning(line) }
    }
    metrics.configLoaded(ok: changed)
    if changed {
        logger.info("configuration loaded", metadata: ["generation": "\(store.snapshot.generation)", "directory": "\(store.directory)"])
        wake?.fire(.configChanged)
    } else if store.snapshot.desired == nil {
        // Nothing to keep yet (a typo in -f, a checkout git-sync has not written): say so.
        logger.error("no valid configuration yet; the daemon does nothing and is not ready until the files are fixed",
                     metadata: ["errors": "\(store.snapshot.errors.count)", "directory": "\(store.directory)"])
    } else {
        logger.error("the new configuration has errors; keeping the last good one",
                     metadata: ["errors": "\(store.snapshot.errors.count)", "directory": "\(store.directory)"])
    }
}

/// `git pull --ff-only` in the configuration directory, through Foundation.Process. A failure
/// (no network, a diverged branch) is logged and counted; the files stay as they are.
enum GitPull {
    static func run(in directory: String, logger: Logger, metrics: DaemonMetrics) async {
        let result: (Int32, String) = await withCheckedContinuation { c in
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["git", "-C", directory, "pull", "--ff-only", "--quiet"]
            let pipe = Pipe()
            p.standardOutput = pipe
            p.standardError = pipe
            p.standardInput = FileHandle.nullDevice
            do {
                try p.run()
            } catch {
                c.resume(returning: (-1, "\(error)"))
                return
            }
            // Read on a thread of its own: the pipe's reader must not block the cooperative pool.
            Thread.detachNewThread {
                let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                p.waitUntilExit()
                c.resume(returning: (p.terminationStatus, out))
            }
        }
        metrics.gitPull(ok: result.0 == 0)
        if result.0 != 0 {
            logger.error("git pull --ff-only failed; the files stay as they are",
                         metadata: ["status": "\(result.0)", "output": "\(result.1.trimmingCharacters(in: .whitespacesAndNewlines))"])
        } else {
            logger.debug("git pull --ff-only done")
        }
    }
}
