import Foundation
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// `haven daemon`: the configuration watcher, the pool event watchers, the dispatcher of the
/// work queue and the HTTP endpoint as one ServiceGroup. SIGTERM or SIGINT shuts it down
/// gracefully: the dispatcher first (no new work; running transfers get the grace period, then
/// stop at their next durable step), then the watchers, the HTTP endpoint last, so probes answer
/// while transfers finish.
public struct Daemon: Sendable {
    public let options: DaemonOptions
    public let logger: Logger
    public let metrics: DaemonMetrics
    public let store: ConfigStore
    public let state = DaemonState()
    let wake = WakeSignal()
    let inbox: Inbox
    let queue: WorkQueue

    public init(options: DaemonOptions, logger: Logger, metrics: DaemonMetrics = DaemonMetrics()) {
        self.options = options
        self.logger = logger
        self.metrics = metrics
        store = ConfigStore(directory: options.configDirectory)
        inbox = Inbox(wake: wake)
        queue = WorkQueue(metrics: metrics)
    }

    /// Routes swift-metrics (whatever the libraries record through it) into the same registry
    /// `/metrics` renders. Once per process.
    public static func bootstrapMetrics(_ metrics: DaemonMetrics) {
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metrics.registry))
    }

    /// Runs until shut down; returns normally after a graceful shutdown.
    public func run() async throws {
        try options.listen.checkBindable()
        // A broken configuration at start is no reason to exit: the daemon waits (not ready) for a good one.
        reload(store: store, metrics: metrics, logger: logger, wake: nil)
        let http = HTTPEndpoint.application(options: options, store: store, state: state, queue: queue, metrics: metrics, logger: logger)
        let watcher = ConfigWatcher(store: store, options: options, wake: wake, metrics: metrics, logger: logger)
        let pools = PoolWatchers(store: store, inbox: inbox, state: state, metrics: metrics, logger: logger)
        let dispatcher = Dispatcher(store: store, options: options, wake: wake, inbox: inbox, queue: queue, metrics: metrics, state: state,
                                    control: WorkerControl(), logger: logger)
        // Shut down in reverse order: the dispatcher first, the HTTP endpoint last.
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [
                .init(service: http, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
                .init(service: watcher, successTerminationBehavior: .ignore, failureTerminationBehavior: .gracefullyShutdownGroup),
                .init(service: pools, successTerminationBehavior: .ignore, failureTerminationBehavior: .gracefullyShutdownGroup),
                .init(service: dispatcher, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        try await group.run()
        logger.info("stopped")
    }
}
