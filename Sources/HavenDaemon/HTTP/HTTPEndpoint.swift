import Foundation
import HavenEngine
import Hummingbird
import Logging

/// The daemon's HTTP side (Hummingbird): `/healthz` (the process answers), `/readyz` (a good
/// configuration is loaded and every pool was read at least once), `/metrics` (Prometheus text),
/// `/api/v1/status` (exactly `haven status --output json`), `/api/v1/daemon` (the daemon's own
/// state: configuration, queue, last reconcile) and `/` (the status page).
enum HTTPEndpoint {
    static func router(store: ConfigStore, state: DaemonState, queue: WorkQueue, metrics: DaemonMetrics, logger: Logger) -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/healthz") { _, _ in text("ok\n") }
        router.get("/readyz") { _, _ in
            let r = Readiness.check(store: store, state: state)
            return text(r.text, status: r.ready ? .ok : .serviceUnavailable)
        }
        router.get("/metrics") { _, _ in
            let now = Date()
            let (depth, longest, unfinished) = queue.read { ($0.depth, $0.longestRunning(now: now), $0.unfinishedWork(now: now)) }
            metrics.queue(depth: depth, longestRunning: longest, unfinished: unfinished)
            do {
                if let report = try state.status(now: now) { metrics.status(report) }
            } catch {
                logger.warning("cannot read the status for /metrics", metadata: ["error": "\(error)"])
            }
            return text(metrics.render(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        }
        // Exactly `haven status --output json`: the same computation, the same encoding.
        router.get("/api/v1/status") { _, _ in
            guard let report = try state.status() else {
                return text("{\"error\": \"no configuration loaded yet\"}\n", status: .serviceUnavailable, contentType: "application/json")
            }
            return text(try report.json() + "\n", contentType: "application/json")
        }
        router.get("/api/v1/daemon") { _, _ in
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            encoder.dateEncodingStrategy = .iso8601
            let data = try encoder.encode(DaemonInfo.make(store: store, state: state, queue: queue))
            return text(String(decoding: data, as: UTF8.self) + "\n", contentType: "application/json")
        }
        router.get("/") { _, _ in
            text(StatusPage.html(try StatusPage.Model.make(store: store, state: state, queue: queue)), contentType: "text/html; charset=utf-8")
        }
        return router
    }

    static func text(_ body: String, status: HTTPResponse.Status = .ok, contentType: String = "text/plain; charset=utf-8") -> Response {
        Response(status: status, headers: [.contentType: contentType, .cacheControl: "no-store"],
                 body: ResponseBody(byteBuffer: ByteBuffer(string: body)))
    }

    static func application(options: DaemonOptions, store: ConfigStore, state: DaemonState, queue: WorkQueue, metrics: DaemonMetrics,
                            logger: Logger) -> some ApplicationProtocol {
        Application(
            router: router(store: store, state: state, queue: queue, metrics: metrics, logger: logger),
            configuration: .init(address: .hostname(options.listen.host, port: options.listen.port), serverName: "haven"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? options.listen.port
                let url = "http://\(ListenAddress(host: options.listen.host, port: port))"
                logger.info("listening on \(url)")
                // One line on standard output: how scripts and tests learn the port chosen for `:0`.
                FileHandle.standardOutput.write(Data("haven daemon: listening on \(url)\n".utf8))
            },
            logger: logger
        )
    }
}

/// Whether the daemon can be sent traffic (Kubernetes readiness): a good configuration, the
/// daemon lock held, and every declared pool read at least once since start.
enum Readiness {
    static func check(store: ConfigStore, state: DaemonState) -> (ready: Bool, text: String) {
        let snap = store.snapshot
        var lines: [String] = []
        var ready = true
        if snap.desired == nil {
            ready = false
            lines.append("not ready: no valid configuration loaded yet")
        }
        let (role, observed, unreachable, watchDown) = state.read { ($0.role, $0.observedOnce, $0.unreachable, $0.watchDown) }
        if role != .active {
            ready = false
            lines.append("not ready: \(role.rawValue)")
        }
        for pool in snap.desired?.pools.map(\.name) ?? [] where !observed.contains(pool) {
            ready = false
            lines.append("not ready: pool \(pool) not observed yet" + (unreachable[pool].map { " (\($0))" } ?? ""))
        }
        // A pool lost after it was read once does not make the daemon unready (the other pools
        // are still kept, and the page that shows the outage must stay reachable), but it is said.
        for pool in snap.desired?.pools.map(\.name) ?? [] where observed.contains(pool) {
            if let down = watchDown[pool] {
                lines.append("degraded: pool \(pool) event watch down since \(DaemonInfo.iso(down.since)): \(down.error)")
            } else if let why = unreachable[pool] {
                lines.append("degraded: pool \(pool) cannot be read: \(why)")
            }
        }
        if !snap.errors.isEmpty {
            lines.append("configuration: the newest files have errors; acting on the last good configuration (generation \(snap.generation)):")
            lines += snap.errors.map { "  \($0)" }
        }
        if ready { lines.insert("ready", at: 0) }
        return (ready, lines.joined(separator: "\n") + "\n")
    }
}
