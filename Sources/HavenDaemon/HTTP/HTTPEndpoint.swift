import Foundation
import Hummingbird
import Logging

/// The daemon's HTTP side (Hummingbird): `/healthz` (the process answers), `/readyz` (a good
/// configuration is loaded and every pool was read at least once), `/metrics` (Prometheus text),
/// `/api/v1/status` (JSON like `haven status --output json`) and `/` (the status page).
enum HTTPEndpoint {
    static func router(store: ConfigStore, state: DaemonState, metrics: DaemonMetrics) -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/healthz") { _, _ in text("ok\n") }
        router.get("/readyz") { _, _ in
            let r = Readiness.check(store: store, state: state)
            return text(r.text, status: r.ready ? .ok : .serviceUnavailable)
        }
        router.get("/metrics") { _, _ in
            let (depth, longest) = state.read { s in
                (s.pending, s.running.values.map { Date().timeIntervalSince($0.startedAt) }.max() ?? 0)
            }
            metrics.queue(depth: depth, longestRunning: longest)
            return text(metrics.render(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        }
        router.get("/api/v1/status") { _, _ in
            let doc = StatusDocument.make(store: store, state: state)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            encoder.dateEncodingStrategy = .iso8601
            let data = (try? encoder.encode(doc)) ?? Data("{}".utf8)
            return text(String(decoding: data, as: UTF8.self) + "\n", contentType: "application/json")
        }
        router.get("/") { _, _ in
            text(StatusPage.html(StatusDocument.make(store: store, state: state)), contentType: "text/html; charset=utf-8")
        }
        return router
    }

    static func text(_ body: String, status: HTTPResponse.Status = .ok, contentType: String = "text/plain; charset=utf-8") -> Response {
        Response(status: status, headers: [.contentType: contentType, .cacheControl: "no-store"],
                 body: ResponseBody(byteBuffer: ByteBuffer(string: body)))
    }

    static func application(options: DaemonOptions, store: ConfigStore, state: DaemonState, metrics: DaemonMetrics, logger: Logger)
        -> some ApplicationProtocol
    {
        Application(
            router: router(store: store, state: state, metrics: metrics),
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
        let (role, observed, unreachable) = state.read { ($0.role, $0.observedOnce, $0.unreachable) }
        if role != .active {
            ready = false
            lines.append("not ready: \(role.rawValue)")
        }
        for pool in snap.desired?.pools.map(\.name) ?? [] where !observed.contains(pool) {
            ready = false
            lines.append("not ready: pool \(pool) not observed yet" + (unreachable[pool].map { " (\($0))" } ?? ""))
        }
        if !snap.errors.isEmpty {
            lines.append("configuration: the newest files have errors; acting on the last good configuration (generation \(snap.generation)):")
            lines += snap.errors.map { "  \($0)" }
        }
        if ready { lines.insert("ready", at: 0) }
        return (ready, lines.joined(separator: "\n") + "\n")
    }
}
