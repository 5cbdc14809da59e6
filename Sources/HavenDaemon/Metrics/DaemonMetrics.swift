import Foundation
import HavenCore
import HavenEngine
import Prometheus
import Synchronization

/// The daemon's Prometheus series, in one registry `/metrics` renders. Per (pool, vm, policy):
/// last success, RPO, backup duration, bytes; per replica: its lag; per key reconcile: its result
/// (haven's words and controller-runtime's); the work queue under client-go's names
/// (`workqueue_*{name="haven"}`). A VM that leaves a policy loses its series at the next scrape.
public final class DaemonMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    /// The per-VM and per-replica series made so far, by label set, to unregister stale ones.
    private let perVM = Mutex<[VMLabels: VMSeries]>([:])
    private let perReplica = Mutex<[[String]: Gauge]>([:])

    struct VMLabels: Hashable {
        var pool, vm, policy: String
        var pairs: [(String, String)] { [("pool", pool), ("vm", vm), ("policy", policy)] }
    }

    struct VMSeries: Sendable {
        var lastSuccess: Gauge?
        var rpoMet: Gauge?
        var duration: ValueHistogram?
        var bytesRead: Counter?
        var bytesStored: Counter?
    }

    static let queueLabels = [("name", "haven")]

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        // Series that exist from the start, so a scrape before the first reconcile already shows them.
        for r in ["succeeded", "no-changes", "failed", "error", "interrupted"] { _ = registry.makeCounter(descriptor: N.reconcile, labels: [("result", r)]) }
        for r in ["success", "error", "requeue_after"] {
            _ = registry.makeCounter(descriptor: N.runtimeReconcile, labels: [("controller", "haven"), ("result", r)])
        }
        _ = registry.makeGauge(descriptor: N.depth, labels: Self.queueLabels)
        _ = registry.makeCounter(descriptor: N.adds, labels: Self.queueLabels)
        _ = registry.makeCounter(descriptor: N.retries, labels: Self.queueLabels)
        _ = registry.makeGauge(descriptor: N.longest, labels: Self.queueLabels)
        _ = registry.makeGauge(descriptor: N.unfinished, labels: Self.queueLabels)
        _ = registry.makeValueHistogram(descriptor: N.workDuration, labels: Self.queueLabels, buckets: Self.queueBuckets)
        _ = registry.makeValueHistogram(descriptor: N.queueDuration, labels: Self.queueLabels, buckets: Self.queueBuckets)
        _ = registry.makeGauge(descriptor: N.configValid)
        _ = registry.makeGauge(descriptor: N.up)
    }

    /// Every series' name and help, in one place: the registry refuses one name with two help texts.
    /// Computed, not stored: `MetricNameDescriptor` is not Sendable.
    enum N {
        static func d(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "haven", metricName: name, unitName: unit, helpText: help)
        }

        /// client-go's and controller-runtime's names, without haven's namespace, as their dashboards expect.
        static func k(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(metricName: name, unitName: unit, helpText: help)
        }

        static var reconcile: MetricNameDescriptor { d("reconcile", "total", "Key reconciles by result (succeeded, no-changes, failed, error, interrupted).") }
        static var runtimeReconcile: MetricNameDescriptor {
            k("controller_runtime_reconcile", "total", "Total number of reconciliations per controller (controller-runtime's series).")
        }
        static var depth: MetricNameDescriptor { k("workqueue_depth", "", "Current depth of workqueue.") }
        static var adds: MetricNameDescriptor { k("workqueue_adds", "total", "Total number of adds handled by workqueue.") }
        static var retries: MetricNameDescriptor { k("workqueue_retries", "total", "Total number of retries handled by workqueue.") }
        static var longest: MetricNameDescriptor {
            k("workqueue_longest_running_processor", "seconds", "How many seconds has the longest running processor for workqueue been running.")
        }
        static var unfinished: MetricNameDescriptor {
            k("workqueue_unfinished_work", "seconds",
              "How many seconds of work has been done that is in progress and hasn't been observed by work_duration.")
        }
        static var workDuration: MetricNameDescriptor { k("workqueue_work_duration", "seconds", "How long in seconds processing an item from workqueue takes.") }
        static var queueDuration: MetricNameDescriptor {
            k("workqueue_queue_duration", "seconds", "How long in seconds an item stays in workqueue before being requested.")
        }
        static var configValid: MetricNameDescriptor { d("config_valid", "", "1 when the newest configuration files loaded; 0 when the daemon keeps the last good one.") }
        static var configReload: MetricNameDescriptor { d("config_reload", "total", "Configuration loads by result.") }
        static var gitPull: MetricNameDescriptor { d("git_pull", "total", "git pull --ff-only runs by result.") }
        static var up: MetricNameDescriptor { d("up", "", "1 while the daemon is active (holds the daemon lock); 0 on standby.") }
        static var poolEvents: MetricNameDescriptor { d("pool_events", "total", "event.from events on VMs and VDIs received per pool.") }
        static var poolWatch: MetricNameDescriptor { d("pool_event_watch_connected", "", "1 while the pool's event.from watch is connected.") }
        static var duration: MetricNameDescriptor { d("backup_duration", "seconds", "Duration of backups.") }
        static var bytesRead: MetricNameDescriptor { d("bytes_read", "total", "Bytes read from the pools by backups.") }
        static var bytesStored: MetricNameDescriptor { d("bytes_stored", "total", "Bytes newly stored in repositories by backups.") }
        static var lastSuccess: MetricNameDescriptor { d("last_success_timestamp", "seconds", "When the VM's last good backup was taken (Unix time).") }
        static var rpoMet: MetricNameDescriptor { d("rpo_met", "", "1 when the VM's last good backup is within its schedule (or its policy is suspended); 0 when the RPO is missed.") }
        static var replicaLag: MetricNameDescriptor { d("replica_lag", "seconds", "How far a replica is behind its schedule (0 within it).") }
    }

    static let durationBuckets: [Double] = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400]
    /// client-go's buckets: 1 µs to 10 s by tens, and longer for backups.
    static let queueBuckets: [Double] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1, 10, 60, 600, 3600]

    func reconciled(_ result: String, requeueAfter: Bool) {
        registry.makeCounter(descriptor: N.reconcile, labels: [("result", result)]).increment()
        let ok = ["succeeded", "no-changes"].contains(result)
        let runtime = !ok ? "error" : requeueAfter ? "requeue_after" : "success"
        registry.makeCounter(descriptor: N.runtimeReconcile, labels: [("controller", "haven"), ("result", runtime)]).increment()
    }

    func configLoaded(ok: Bool) {
        registry.makeGauge(descriptor: N.configValid).set(to: ok ? 1 : 0)
        registry.makeCounter(descriptor: N.configReload, labels: [("result", ok ? "ok" : "error")]).increment()
    }

    func gitPull(ok: Bool) { registry.makeCounter(descriptor: N.gitPull, labels: [("result", ok ? "ok" : "error")]).increment() }

    func active(_ on: Bool) { registry.makeGauge(descriptor: N.up).set(to: on ? 1 : 0) }

    func queueAdded() { registry.makeCounter(descriptor: N.adds, labels: Self.queueLabels).increment() }

    func queueRetried() { registry.makeCounter(descriptor: N.retries, labels: Self.queueLabels).increment() }

    func queueTimes(queued: Double? = nil, worked: Double? = nil) {
        if let queued { registry.makeValueHistogram(descriptor: N.queueDuration, labels: Self.queueLabels, buckets: Self.queueBuckets).record(queued) }
        if let worked { registry.makeValueHistogram(descriptor: N.workDuration, labels: Self.queueLabels, buckets: Self.queueBuckets).record(worked) }
    }

    /// The queue's gauges, at scrape time.
    func queue(depth: Int, longestRunning: Double, unfinished: Double) {
        registry.makeGauge(descriptor: N.depth, labels: Self.queueLabels).set(to: Double(depth))
        registry.makeGauge(descriptor: N.longest, labels: Self.queueLabels).set(to: longestRunning)
        registry.makeGauge(descriptor: N.unfinished, labels: Self.queueLabels).set(to: unfinished)
    }

    func poolEvents(_ pool: String, count: Int) {
        registry.makeCounter(descriptor: N.poolEvents, labels: [("pool", pool)]).increment(by: Int64(count))
    }

    func poolWatch(_ pool: String, connected: Bool) {
        registry.makeGauge(descriptor: N.poolWatch, labels: [("pool", pool)]).set(to: connected ? 1 : 0)
    }

    /// One finished backup.
    func backup(pool: String, vm: String, policy: String, seconds: Double, bytesRead: Int64, bytesStored: Int64) {
        let l = VMLabels(pool: pool, vm: vm, policy: policy)
        perVM.withLock { all in
            var s = all[l] ?? VMSeries()
            s.duration = s.duration ?? registry.makeValueHistogram(descriptor: N.duration, labels: l.pairs, buckets: Self.durationBuckets)
            s.bytesRead = s.bytesRead ?? registry.makeCounter(descriptor: N.bytesRead, labels: l.pairs)
            s.bytesStored = s.bytesStored ?? registry.makeCounter(descriptor: N.bytesStored, labels: l.pairs)
            s.duration?.record(seconds)
            s.bytesRead?.increment(by: bytesRead)
            s.bytesStored?.increment(by: bytesStored)
            all[l] = s
        }
    }

    /// The per-VM gauges and the replicas' lag from a status report. Series of VMs and replicas
    /// the report no longer has (a VM removed from a policy, a policy deleted) are unregistered.
    func status(_ report: StatusReport) {
        perVM.withLock { all in
            var seen = Set<VMLabels>()
            for r in report.vms {
                let l = VMLabels(pool: r.pool, vm: r.vm, policy: r.policy)
                seen.insert(l)
                var s = all[l] ?? VMSeries()
                if let last = r.lastBackup {
                    s.lastSuccess = s.lastSuccess ?? registry.makeGauge(descriptor: N.lastSuccess, labels: l.pairs)
                    s.lastSuccess?.set(to: last.timeIntervalSince1970)
                }
                s.rpoMet = s.rpoMet ?? registry.makeGauge(descriptor: N.rpoMet, labels: l.pairs)
                s.rpoMet?.set(to: r.rpoMet || r.suspended ? 1 : 0)
                all[l] = s
            }
            for (l, s) in all where !seen.contains(l) {
                if let g = s.lastSuccess { registry.unregisterGauge(g) }
                if let g = s.rpoMet { registry.unregisterGauge(g) }
                if let h = s.duration { registry.unregisterValueHistogram(h) }
                if let c = s.bytesRead { registry.unregisterCounter(c) }
                if let c = s.bytesStored { registry.unregisterCounter(c) }
                all[l] = nil
            }
        }
        perReplica.withLock { all in
            var seen = Set<[String]>()
            for r in report.replicas {
                let labels = [("pool", r.sourcePool), ("vm", r.vm), ("policy", r.policy), ("target", r.targetPool)]
                let key = labels.map(\.1)
                seen.insert(key)
                let g = all[key] ?? registry.makeGauge(descriptor: N.replicaLag, labels: labels)
                g.set(to: r.lagSeconds ?? 0)
                all[key] = g
            }
            for (key, g) in all where !seen.contains(key) {
                registry.unregisterGauge(g)
                all[key] = nil
            }
        }
    }

    /// The Prometheus text exposition format.
    public func render() -> String { registry.emitToString() }
}
