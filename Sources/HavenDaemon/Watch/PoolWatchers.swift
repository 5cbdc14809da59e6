import Foundation
import HavenEngine
import HavenSpec
import Logging
import ServiceLifecycle
import XenAPI

/// One `event.from` watch per declared pool, each on a session of its own (the engine logs its
/// sessions out after every reconcile). Events on VMs and VDIs — a CBT disabled by hand, a disk
/// added, a VM renamed into a policy — ring the reconcile loop, which folds a burst into one run.
/// The set of watches follows the configuration: a new good configuration restarts them.
struct PoolWatchers: Service {
    let store: ConfigStore
    let wake: WakeSignal
    let metrics: DaemonMetrics
    let state: DaemonState
    let logger: Logger
    /// How often the configuration generation is compared, to restart the watches on a change.
    var recheck: Duration = .seconds(2)

    func run() async throws {
        try await cancelWhenGracefulShutdown { await watchAll() }
    }

    private func watchAll() async {
        while !Task.isCancelled {
            let snap = store.snapshot
            let pools = snap.desired?.pools ?? []
            await withTaskGroup(of: Void.self) { g in
                for pool in pools {
                    g.addTask { await watch(pool) }
                }
                // Until the configuration changes (or shutdown): then the group is cancelled and started again.
                g.addTask {
                    while !Task.isCancelled, store.snapshot.generation == snap.generation { try? await Task.sleep(for: recheck) }
                }
                _ = await g.next()
                g.cancelAll()
            }
        }
    }

    /// Watches one pool until cancelled: reconnects with backoff (1 s doubling to 30 s). The client
    /// logs in again by itself on SESSION_INVALID; a token the pool no longer knows starts over,
    /// and a reconcile is asked for then, as events may have been missed.
    private func watch(_ pool: Pool) async {
        var backoff = Duration.seconds(1)
        var reconnecting = false
        while !Task.isCancelled {
            let client: XenAPIClient
            do {
                client = try PoolConnection.client(for: pool)
            } catch {
                logger.error("cannot watch pool events", metadata: ["pool": "\(pool.name)", "error": "\(error)"])
                try? await Task.sleep(for: .seconds(30))
                continue
            }
            do {
                // The first call with an empty token lists every object: only its token is kept.
                var token = try await client.events(of: Self.classes, token: "", timeout: 0.1).token
                metrics.poolWatch(pool.name, connected: true)
                logger.info("watching pool events", metadata: ["pool": "\(pool.name)"])
                backoff = .seconds(1)
                // Events may have been missed while disconnected: look again. (Not on every failed
                // attempt: a pool that is down is the loop's backoff to pace, not the watcher's.)
                if reconnecting { wake.fire(.poolEvent(pool.name)) }
                reconnecting = false
                while !Task.isCancelled {
                    // A short long-poll: the call cannot be interrupted, so this bounds how long shutdown waits for it.
                    let batch = try await client.events(of: Self.classes, token: token, timeout: 5)
                    token = batch.token
                    let relevant = batch.events.filter(Self.relevant)
                    guard !relevant.isEmpty else { continue }
                    metrics.poolEvents(pool.name, count: relevant.count)
                    logger.debug("pool events", metadata: ["pool": "\(pool.name)", "count": "\(relevant.count)"])
                    wake.fire(.poolEvent(pool.name))
                }
            } catch {
                metrics.poolWatch(pool.name, connected: false)
                if Task.isCancelled {
                    await client.logout()
                    break
                }
                logger.warning("pool event watch interrupted; reconnecting", metadata: ["pool": "\(pool.name)", "error": "\(error)",
                                                                                         "retryIn": "\(backoff)"])
                reconnecting = true
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(30))
            }
            await client.logout()
        }
        metrics.poolWatch(pool.name, connected: false)
    }

    static let classes = ["vm", "vdi"]

    /// Changes that can make the pools drift from the configuration. Task-driven churn (current
    /// operations, allowed operations) on its own is not worth a reconcile, but telling it apart
    /// needs the previous record: every add, del and mod counts, and the debounce absorbs bursts.
    static func relevant(_ e: XenEvent) -> Bool {
        ["vm", "vdi"].contains(e.className.lowercased())
    }
}
