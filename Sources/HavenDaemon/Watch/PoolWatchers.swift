import Foundation
import Synchronization
import HavenEngine
import HavenSpec
import Logging
import ServiceLifecycle
import XenAPI

/// One `event.from` watch per declared pool, each on a session of its own. Events on VMs and VDIs
/// — a CBT disabled by hand, a disk added, a VM tagged into a policy — are handed to the
/// dispatcher as touched objects, which it maps to work keys. The set of watches follows the
/// configuration: a new good configuration restarts them.
struct PoolWatchers: Service {
    let store: ConfigStore
    let inbox: Inbox
    let state: DaemonState
    let metrics: DaemonMetrics
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
    /// logs in again by itself on SESSION_INVALID and follows a new master; a token the pool no
    /// longer knows (EVENTS_LOST) starts over with a fresh listing, and the pool is looked at
    /// again in full, as events may have been missed.
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
                // The first call with an empty token lists every object: its refs name what later `del` events lose.
                let listing = try await client.events(of: Self.classes, token: "", timeout: 0.1)
                var refs = EventRefs()
                for e in listing.events { _ = refs.touched(e) }
                var token = listing.token
                metrics.poolWatch(pool.name, connected: true)
                state.watch(pool.name, down: nil)
                logger.info("watching pool events", metadata: ["pool": "\(pool.name)"])
                backoff = .seconds(1)
                if reconnecting { inbox.resync(pool.name) }
                reconnecting = false
                while !Task.isCancelled {
                    // The call itself cannot be interrupted: on shutdown it is abandoned (its reply is dropped).
                    let current = token
                    let batch = try await abandonable { try await client.events(of: Self.classes, token: current, timeout: 30) }
                    token = batch.token
                    let touched = batch.events.compactMap { refs.touched($0) }
                    guard !touched.isEmpty else { continue }
                    metrics.poolEvents(pool.name, count: touched.count)
                    logger.debug("pool events", metadata: ["pool": "\(pool.name)", "count": "\(touched.count)"])
                    inbox.events(pool.name, touched)
                }
            } catch {
                metrics.poolWatch(pool.name, connected: false)
                if Task.isCancelled {
                    await client.logout()
                    break
                }
                logger.warning("pool event watch interrupted; reconnecting", metadata: ["pool": "\(pool.name)", "error": "\(error)",
                                                                                         "retryIn": "\(backoff)"])
                state.watch(pool.name, down: "\(error)")
                reconnecting = true
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(30))
            }
            await client.logout()
        }
        metrics.poolWatch(pool.name, connected: false)
        state.watch(pool.name, down: nil)
    }

    static let classes = ["vm", "vdi"]
}

/// The refs a watch has seen, so a `del` event (which carries no record) and a snapshot's
/// `snapshot_of` (a ref) can be named by uuid.
struct EventRefs {
    var uuids: [String: String] = [:]

    mutating func touched(_ e: XenEvent) -> TouchedObject? {
        let cls: TouchedObject.Class
        switch e.className.lowercased() {
        case "vm": cls = .vm
        case "vdi": cls = .vdi
        default: return nil
        }
        guard e.operation != .del else {
            guard let uuid = uuids.removeValue(forKey: e.ref) else { return nil }
            var t = TouchedObject(cls: cls, uuid: uuid)
            t.deleted = true
            return t
        }
        guard let fields = e.snapshot else { return nil }
        switch cls {
        case .vm:
            let r = VMRecord(fields)
            uuids[e.ref] = r.uuid
            var t = TouchedObject(cls: .vm, uuid: r.uuid)
            t.isRealVM = r.isRealVM
            t.isSnapshot = r.isASnapshot
            t.snapshotOf = r.isASnapshot ? uuids[r.snapshotOf.raw] : nil
            t.name = r.nameLabel
            t.tags = r.tags
            t.havenRole = r.otherConfig["haven.role"]
            return t
        case .vdi:
            let r = VDIRecord(fields)
            uuids[e.ref] = r.uuid
            var t = TouchedObject(cls: .vdi, uuid: r.uuid)
            t.isSnapshot = r.isASnapshot
            t.snapshotOf = r.isASnapshot ? uuids[r.snapshotOf.raw] : nil
            return t
        }
    }
}

/// Runs `operation` and returns its result, or throws `CancellationError` as soon as the calling
/// task is cancelled, leaving the operation to finish on its own (a blocking long-poll that
/// would otherwise hold a graceful shutdown for its whole timeout).
func abandonable<T: Sendable>(_ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    let slot = ContinuationSlot<T>()
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
            slot.set(c)
            if Task.isCancelled {
                slot.resume(with: .failure(CancellationError()))
                return
            }
            Task {
                let result: Result<T, any Error>
                do { result = .success(try await operation()) } catch { result = .failure(error) }
                slot.resume(with: result)
            }
        }
    } onCancel: {
        slot.resume(with: .failure(CancellationError()))
    }
}

/// A continuation resumed once, by whichever comes first.
final class ContinuationSlot<T: Sendable>: Sendable {
    private let c = Mutex<CheckedContinuation<T, any Error>?>(nil)

    func set(_ continuation: CheckedContinuation<T, any Error>) { c.withLock { $0 = continuation } }

    func resume(with result: Result<T, any Error>) {
        let taken = c.withLock { s -> CheckedContinuation<T, any Error>? in
            defer { s = nil }
            return s
        }
        taken?.resume(with: result)
    }
}
