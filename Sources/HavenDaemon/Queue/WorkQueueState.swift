import Foundation
import HavenCore

/// The daemon's work queue, as controller-runtime's (client-go's workqueue): a key is never handed
/// to two workers at once; adding a key that is queued does nothing, adding one that is being
/// processed marks it dirty and it is queued once more when done; failures are retried after a
/// per-key exponential backoff (5 ms doubling up to 1000 s); delayed adds wait in a timer list
/// whose earliest entry is when the dispatcher must wake. Beyond client-go: per-pool limits (a
/// key counts against each pool it acts on). A pool's housekeeping is outside the limits: it is
/// short, and it must never wait behind an hours-long backup (it leaves busy keys' VMs alone).
///
/// Pure: every operation takes `now`; the owner keeps it behind a lock and sleeps until `nextWake`.
public struct WorkQueueState: Sendable {
    public static let baseDelay = 0.005
    public static let maxDelay = 1000.0

    /// Keys ready to be handed out, oldest first.
    private(set) var queue: [WorkKey] = []
    private var queued: Set<WorkKey> = []
    /// When each queued key was added (`workqueue_queue_duration_seconds`).
    private var addedAt: [WorkKey: Date] = [:]
    /// Keys handed out and not done, with when.
    private(set) var processing: [WorkKey: Date] = [:]
    /// Keys added while processed: queued again once done.
    private(set) var dirty: Set<WorkKey> = []
    /// Delayed adds: the key is added at that moment (the earliest one wins).
    private(set) var waiting: [WorkKey: Date] = [:]
    private var failures: [WorkKey: Int] = [:]
    /// Per pool, how many keys may be processed at once (1 when not said).
    public var limits: [String: Int] = [:]
    /// Replication policy -> its target pool: a replication key acts on both pools.
    public var targets: [String: String] = [:]
    /// Policy -> the AppliancePools its transfers go through: one key at a time per
    /// AppliancePool, as each plan provisions and leases appliances on its own.
    public var appliancePools: [String: [String]] = [:]
    private var busy: [String: Int] = [:]
    /// Adds (`workqueue_adds_total`) and retries (`workqueue_retries_total`) so far.
    public private(set) var adds = 0
    public private(set) var retries = 0

    public init(limits: [String: Int] = [:], targets: [String: String] = [:]) {
        self.limits = limits
        self.targets = targets
    }

    /// The pools a key acts on.
    public func pools(of key: WorkKey) -> [String] {
        if key.kind == .replication, let t = targets[key.policy], t != key.pool { return [key.pool, t] }
        return [key.pool]
    }

    /// Queues the key now. True when this counts as an add (it was neither queued nor dirty).
    @discardableResult
    public mutating func add(_ key: WorkKey, now: Date) -> Bool {
        waiting[key] = nil
        if processing[key] != nil {
            guard dirty.insert(key).inserted else { return false }
            adds += 1
            return true
        }
        guard queued.insert(key).inserted else { return false }
        queue.append(key)
        addedAt[key] = now
        adds += 1
        return true
    }

    /// Queues the key at `at` (now if that is past). An earlier pending time is kept.
    public mutating func addAfter(_ key: WorkKey, at: Date, now: Date) {
        if at <= now {
            add(key, now: now)
            return
        }
        if let existing = waiting[key], existing <= at { return }
        waiting[key] = at
    }

    /// The backoff of a key that failed `failures` times before: 5 ms × 2^failures, at most 1000 s.
    public static func backoff(failures: Int) -> Double {
        min(baseDelay * pow(2, Double(min(failures, 40))), maxDelay)
    }

    /// After a failure: queued again once its backoff has passed; returns that delay.
    @discardableResult
    public mutating func addRateLimited(_ key: WorkKey, now: Date) -> Double {
        let n = failures[key, default: 0]
        failures[key] = n + 1
        retries += 1
        let delay = Self.backoff(failures: n)
        addAfter(key, at: now.addingTimeInterval(delay), now: now)
        return delay
    }

    /// After a success: the key's backoff starts over.
    public mutating func forget(_ key: WorkKey) { failures[key] = nil }

    public func requeues(_ key: WorkKey) -> Int { failures[key, default: 0] }

    /// The key is gone (its policy or VM no longer declared): no timer, no retry. One being
    /// processed finishes.
    public mutating func remove(_ key: WorkKey) {
        waiting[key] = nil
        failures[key] = nil
        dirty.remove(key)
        if queued.remove(key) != nil {
            queue.removeAll { $0 == key }
            addedAt[key] = nil
        }
    }

    /// The next key a worker may take, in order of addition, skipping keys whose pools are at their
    /// limit (and, to keep order per pool, every later key of those pools); timers that are due
    /// are queued first. Returns the key and how long it waited in the queue.
    public mutating func next(now: Date) -> (key: WorkKey, queuedFor: Double)? {
        for (key, _) in waiting.filter({ $0.value <= now }).sorted(by: { ($0.value, $0.key) < ($1.value, $1.key) }) {
            add(key, now: now)
        }
        var blocked = Set<String>()
        for (i, key) in queue.enumerated() {
            let pools = limited(key)
            // What is at its limit holds this key, and every later key needing it (first come, first served).
            let full = pools.filter { blocked.contains($0) || busy[$0, default: 0] >= limit($0) }
            if !full.isEmpty {
                blocked.formUnion(full)
                continue
            }
            queue.remove(at: i)
            queued.remove(key)
            let waited = addedAt.removeValue(forKey: key).map { now.timeIntervalSince($0) } ?? 0
            processing[key] = now
            for p in pools { busy[p, default: 0] += 1 }
            return (key, waited)
        }
        return nil
    }

    private func limit(_ resource: String) -> Int { resource.hasPrefix("appliances:") ? 1 : max(1, limits[resource] ?? 1) }

    /// What a key counts against: its pools, and (limit 1) the AppliancePools it transfers
    /// through; nothing for housekeeping.
    private func limited(_ key: WorkKey) -> [String] {
        key.isHousekeeping ? [] : pools(of: key) + (appliancePools[key.policy] ?? []).map { "appliances:" + $0 }
    }

    /// The worker finished the key (whatever the outcome): a key that became dirty meanwhile is
    /// queued again. Returns how long it was processed.
    @discardableResult
    public mutating func done(_ key: WorkKey, now: Date) -> Double {
        guard let started = processing.removeValue(forKey: key) else { return 0 }
        for p in limited(key) { busy[p, default: 0] -= 1 }
        if dirty.remove(key) != nil {
            queued.insert(key)
            queue.append(key)
            addedAt[key] = now
        }
        return now.timeIntervalSince(started)
    }

    /// When the earliest timer fires; nil when none waits.
    public var nextWake: Date? { waiting.values.min() }

    /// Keys ready and not handed out (`workqueue_depth`).
    public var depth: Int { queue.count }

    public var isIdle: Bool { queue.isEmpty && processing.isEmpty }

    public func isProcessing(_ key: WorkKey) -> Bool { processing[key] != nil }

    /// The (policy, VM) keys being processed: what a housekeeping run must leave alone.
    public var busyKeys: Set<WorkKey> { Set(processing.keys.filter { !$0.isHousekeeping }) }

    /// How long the longest-running key has been processed (`workqueue_longest_running_processor_seconds`).
    public func longestRunning(now: Date) -> Double { processing.values.map { now.timeIntervalSince($0) }.max() ?? 0 }

    /// Seconds of work in progress not yet done, summed (`workqueue_unfinished_work_seconds`).
    public func unfinishedWork(now: Date) -> Double { processing.values.reduce(0) { $0 + now.timeIntervalSince($1) } }
}
