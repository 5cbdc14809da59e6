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
        for r in ["succeeded", "no-changes", "failed", "error", "interrupted"] { _ = reconcileCounter(r) }
        _ = registry.makeGauge(descriptor: Self.d("workqueue_depth", "", "Actions of the current reconcile not yet finished."))
        _ = registry.makeCounter(descriptor: Self.d("workqueue_adds", "total", "Actions added to the work queue (planned)."))
        _ = registry.makeCounter(descriptor: Self.d("workqueue_retries", "total", "Reconciles run again after a failure (with backoff)."))
        _ = registry.makeGauge(descriptor: Self.d("workqueue_longest_running_processor", "seconds",
                                                  "How long the longest-running action of the current reconcile has been running."))
        _ = registry.makeGauge(descriptor: Self.d("config_valid", "", "1 when the newest configuration files loaded; 0 when the daemon keeps the last good one."))
        _ = registry.makeGauge(descriptor: Self.d("up", "", "1 while the daemon is active (holds the daemon lock); 0 on standby."))
    }

    static func d(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "haven", metricName: name, unitName: unit, helpText: help)
    }

    static let durationBuckets: [Double] = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400]

    func reconcileCounter(_ result: String) -> Counter {
        registry.makeCounter(descriptor: Self.d("reconcile", "total", "Reconciles by result."), labels: [("result", result)])
    }

    func reconciled(_ result: String) { reconcileCounter(result).increment() }

    func configLoaded(ok: Bool) {
        registry.makeGauge(descriptor: Self.d("config_valid", "", "")).set(to: ok ? 1 : 0)
        registry.makeCounter(descriptor: Self.d("config_reload", "total", "Configuration loads by result."), labels: [("result", ok ? "ok" : "error")])
            .increment()
    }

    func gitPull(ok: Bool) {
        registry.makeCounter(descriptor: Self.d("git_pull", "total", "git pull --ff-only runs by result."), labels: [("result", ok ? "ok" : "error")])
            .increment()
    }

    func active(_ on: Bool) { registry.makeGauge(descriptor: Self.d("up", "", "")).set(to: on ? 1 : 0) }

    func planned(_ count: Int) {
        registry.makeCounter(descriptor: Self.d("workqueue_adds", "total", "")).increment(by: Int64(count))
    }

    func retried() { registry.makeCounter(descriptor: Self.d("workqueue_retries", "total", "")).increment() }

    func queue(depth: Int, longestRunning: Double) {
        registry.makeGauge(descriptor: Self.d("workqueue_depth", "", "")).set(to: Double(depth))
        registry.makeGauge(descriptor: Self.d("workqueue_longest_running_processor", "seconds", "")).set(to: longestRunning)
    }

    func poolEvents(_ pool: String, count: Int) {
        registry.makeCounter(descriptor: Self.d("pool_events", "total", "event.from events received per pool."), labels: [("pool", pool)])
            .increment(by: Int64(count))
    }

    func poolWatch(_ pool: String, connected: Bool) {
        registry.makeGauge(descriptor: Self.d("pool_event_watch_connected", "", "1 while the pool's event.from watch is connected."),
                           labels: [("pool", pool)]).set(to: connected ? 1 : 0)
    }

    /// One finished backup.
    func backup(pool: String, vm: String, policy: String, seconds: Double, bytesRead: Int64, bytesStored: Int64) {
        let labels = [("pool", pool), ("vm", vm), ("policy", policy)]
        registry.makeValueHistogram(descriptor: Self.d("backup_duration", "seconds", "Duration of backups."), labels: labels,
                                    buckets: Self.durationBuckets).record(seconds)
        registry.makeCounter(descriptor: Self.d("bytes_read", "total", "Bytes read from the pools by backups."), labels: labels)
            .increment(by: bytesRead)
        registry.makeCounter(descriptor: Self.d("bytes_stored", "total", "Bytes newly stored in repositories by backups."), labels: labels)
            .increment(by: bytesStored)
    }

    /// The per-VM gauges from a status report.
    func status(_ report: StatusReport) {
        for r in report.vms {
            let labels = [("pool", r.pool), ("vm", r.vm), ("policy", r.policy)]
            if let last = r.lastBackup {
                registry.makeGauge(descriptor: Self.d("last_success_timestamp", "seconds", "When the VM's last good backup was taken (Unix time)."),
                                   labels: labels).set(to: last.timeIntervalSince1970)
            }
            registry.makeGauge(descriptor: Self.d("rpo_met", "", "1 when the VM's last good backup is within its schedule; 0 when the RPO is missed."),
                               labels: labels).set(to: r.rpoMet || r.suspended ? 1 : 0)
        }
    }

    /// The Prometheus text exposition format.
    public func render() -> String { registry.emitToString() }
}
