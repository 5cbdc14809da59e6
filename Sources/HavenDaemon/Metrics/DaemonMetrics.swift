import Foundation
import HavenCore
import Prometheus

/// The daemon's Prometheus series, in one registry `/metrics` renders. Per (pool, vm, policy):
/// last success, RPO, backup duration, bytes; per reconcile: its result; workqueue-style gauges
/// (depth, adds, retries, longest running) after client-go's names.
public final class DaemonMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        // Series that exist from the start, so a scrape before the first reconcile already shows them.
        for r in ["succeeded", "no-changes", "failed", "error", "interrupted"] { _ = registry.makeCounter(descriptor: N.reconcile, labels: [("result", r)]) }
        _ = registry.makeGauge(descriptor: N.depth)
        _ = registry.makeCounter(descriptor: N.adds)
        _ = registry.makeCounter(descriptor: N.retries)
        _ = registry.makeGauge(descriptor: N.longest)
        _ = registry.makeGauge(descriptor: N.configValid)
        _ = registry.makeGauge(descriptor: N.up)
    }

    /// Every series' name and help, in one place: the registry refuses one name with two help texts.
    /// Computed, not stored: `MetricNameDescriptor` is not Sendable.
    enum N {
        static func d(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "haven", metricName: name, unitName: unit, helpText: help)
        }

        static var reconcile: MetricNameDescriptor { d("reconcile", "total", "Reconciles by result.") }
        static var depth: MetricNameDescriptor { d("workqueue_depth", "", "Actions of the current reconcile not yet finished.") }
        static var adds: MetricNameDescriptor { d("workqueue_adds", "total", "Actions added to the work queue (planned).") }
        static var retries: MetricNameDescriptor { d("workqueue_retries", "total", "Reconciles run again after a failure (with backoff).") }
        static var longest: MetricNameDescriptor { d("workqueue_longest_running_processor", "seconds",
                               "How long the longest-running action of the current reconcile has been running.") }
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
    }

    static let durationBuckets: [Double] = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400]

    func reconciled(_ result: String) { registry.makeCounter(descriptor: N.reconcile, labels: [("result", result)]).increment() }

    func configLoaded(ok: Bool) {
        registry.makeGauge(descriptor: N.configValid).set(to: ok ? 1 : 0)
        registry.makeCounter(descriptor: N.configReload, labels: [("result", ok ? "ok" : "error")]).increment()
    }

    func gitPull(ok: Bool) { registry.makeCounter(descriptor: N.gitPull, labels: [("result", ok ? "ok" : "error")]).increment() }

    func active(_ on: Bool) { registry.makeGauge(descriptor: N.up).set(to: on ? 1 : 0) }

    func planned(_ count: Int) { registry.makeCounter(descriptor: N.adds).increment(by: Int64(count)) }

    func retried() { registry.makeCounter(descriptor: N.retries).increment() }

    func queue(depth: Int, longestRunning: Double) {
        registry.makeGauge(descriptor: N.depth).set(to: Double(depth))
        registry.makeGauge(descriptor: N.longest).set(to: longestRunning)
    }

    func poolEvents(_ pool: String, count: Int) {
        registry.makeCounter(descriptor: N.poolEvents, labels: [("pool", pool)]).increment(by: Int64(count))
    }

    func poolWatch(_ pool: String, connected: Bool) {
        registry.makeGauge(descriptor: N.poolWatch, labels: [("pool", pool)]).set(to: connected ? 1 : 0)
    }

    /// One finished backup.
    func backup(pool: String, vm: String, policy: String, seconds: Double, bytesRead: Int64, bytesStored: Int64) {
        let labels = [("pool", pool), ("vm", vm), ("policy", policy)]
        registry.makeValueHistogram(descriptor: N.duration, labels: labels, buckets: Self.durationBuckets).record(seconds)
        registry.makeCounter(descriptor: N.bytesRead, labels: labels).increment(by: bytesRead)
        registry.makeCounter(descriptor: N.bytesStored, labels: labels).increment(by: bytesStored)
    }

    /// The per-VM gauges from a status report.
    func status(_ report: StatusReport) {
        for r in report.vms {
            let labels = [("pool", r.pool), ("vm", r.vm), ("policy", r.policy)]
            if let last = r.lastBackup { registry.makeGauge(descriptor: N.lastSuccess, labels: labels).set(to: last.timeIntervalSince1970) }
            registry.makeGauge(descriptor: N.rpoMet, labels: labels).set(to: r.rpoMet || r.suspended ? 1 : 0)
        }
    }

    /// The Prometheus text exposition format.
    public func render() -> String { registry.emitToString() }
}
