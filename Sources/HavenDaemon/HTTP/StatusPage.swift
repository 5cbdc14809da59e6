import Foundation
import HavenCatalog
import HavenCore
import HavenEngine

/// The status page: server-rendered HTML, no script. Every protected VM with its last good backup,
/// next due time, RPO (colour and word, so it reads without colour too) and last error; the
/// replicas with their lag; backup sizes and durations over time as inline SVG charts drawn from
/// the catalog.
enum StatusPage {
    struct Model {
        var report: StatusReport?
        var info: DaemonInfo
        /// Oldest first.
        var backups: [BackupRecord]
        /// Successful backups with their start and end, oldest first.
        var timings: [RunActionRecord]
        var now: Date

        static func make(store: ConfigStore, state: DaemonState, queue: WorkQueue, now: Date = Date()) throws -> Model {
            let report = try state.status(now: now)
            let catalog = state.read { $0.engine?.catalog }
            let backups = try catalog?.view().backups.sorted { $0.createdAt < $1.createdAt } ?? []
            return Model(report: report, info: DaemonInfo.make(store: store, state: state, queue: queue), backups: Array(backups.suffix(500)),
                         timings: try catalog?.backupTimings() ?? [], now: now)
        }
    }

    static func html(_ m: Model) -> String {
        let f = DateFormatter()
        f.dateFormat = "yyyy-MM-dd HH:mm:ss"
        f.timeZone = TimeZone(identifier: "UTC")
        func date(_ d: Date?) -> String { d.map { f.string(from: $0) + " UTC" } ?? "never" }
        var rows = ""
        for r in m.report?.vms ?? [] {
            let rpo = r.suspended ? ("suspended", "suspended" + (r.suspendedBy == "command" ? " (haven suspend)" : "")) : r.rpoMet ? ("met", "met") : ("missed", "MISSED")
            let lastError = r.lastAttempt.flatMap { $0.result == "succeeded" ? nil : "\($0.result): \($0.message)" } ?? ""
            rows += """
                <tr><td>\(esc(r.pool))</td><td class="vm">\(esc(r.vm))</td><td>\(esc(r.policy))</td><td>\(date(r.lastBackup))</td>\
                <td>\(r.suspended ? "-" : r.nextDue.map { $0 <= m.now ? "now" : date($0) } ?? "-")</td><td>\(r.versions)</td>\
                <td class="rpo \(rpo.0)">\(rpo.1)</td><td class="err">\(esc(lastError))</td></tr>

                """
        }
        if (m.report?.vms ?? []).isEmpty { rows = "<tr><td colspan=\"8\">No protected VM observed yet.</td></tr>\n" }
        var replicas = ""
        for r in m.report?.replicas ?? [] {
            let lag = r.lagSeconds.map { $0 > 0 ? duration($0) : "none" } ?? "-"
            let lagging = (r.lagSeconds ?? 0) > 0 && r.state != "failed over"
            replicas += """
                <tr><td class="vm">\(esc(r.vm))</td><td>\(esc(r.policy))</td><td>\(esc(r.replica.isEmpty ? r.replicaUUID : r.replica))</td>\
                <td>\(esc(r.targetPool))</td><td>\(date(r.lastSync))</td><td class="rpo \(lagging ? "missed" : "met")">\(lagging ? "LAGGING " : "")\(lag)</td>\
                <td>\(r.restorePoints.map(String.init) ?? "-")</td><td>\(esc(r.state))</td></tr>

                """
        }
        let d = m.info
        var banner = ""
        if !d.config.errors.isEmpty {
            banner = "<div class=\"banner\"><strong>The newest configuration has errors</strong>; acting on the last good one (generation \(d.config.generation)):<pre>"
                + d.config.errors.map(esc).joined(separator: "\n") + "</pre></div>"
        }
        if !d.config.loaded { banner += "<div class=\"banner\">No valid configuration loaded yet.</div>" }
        for (pool, why) in d.unreachablePools.sorted(by: { $0.key < $1.key }) {
            banner += "<div class=\"banner\">Pool <strong>\(esc(pool))</strong> cannot be read: \(esc(why))</div>"
        }
        if !d.suspensions.isEmpty {
            banner += "<div class=\"banner\">Suspended by <code>haven suspend</code>: "
                + d.suspensions.map { "<strong>\(esc($0.policy))</strong> (\(esc($0.by)), \(date($0.at)))" }.joined(separator: ", ") + "</div>"
        }
        let last = d.lastReconcile.map { "last reconcile (\(esc($0.key))) \(esc($0.result)) at \(date($0.endedAt)): \(esc($0.message))" } ?? "no reconcile yet"
        let running = d.running.map { "<li>\(esc($0.pool)): \(esc($0.what)) since \(date($0.startedAt))</li>" }.joined()
        let missed = m.report?.rpoMissed ?? false
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="15">
            <title>haven status</title>
            <style>
            body{font-family:system-ui,sans-serif;margin:2em;color:#222}
            table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
            .rpo.met{color:#fff;background:#2e7d32}.rpo.missed{color:#fff;background:#c62828}.rpo.suspended{background:#ddd}
            .err{color:#c62828;max-width:40em}.banner{background:#fff3e0;border-left:4px solid #ef6c00;padding:.5em 1em;margin:.5em 0}
            .meta{color:#666}.overall{font-size:1.2em;padding:.3em .6em;display:inline-block}
            </style></head><body>
            <h1>haven</h1>
            <p class="overall rpo \(missed ? "missed" : "met")">\(missed ? "RPO MISSED for at least one VM or replica" : "Every RPO met")</p>
            <p class="meta">\(esc(d.role.rawValue)); configuration generation \(d.config.generation) from \(esc(d.config.directory)); \
            queue: \(d.queue.depth) ready, \(d.queue.processing.count) running, \(d.queue.waiting) timed; \(last)</p>
            \(banner)
            \(running.isEmpty ? "" : "<h2>Running</h2><ul>\(running)</ul>")
            <h2>Protected VMs</h2>
            <table id="vms"><thead><tr><th>Pool</th><th>VM</th><th>Policy</th><th>Last good backup</th><th>Next due</th><th>Versions</th><th>RPO</th><th>Last error</th></tr></thead>
            <tbody>
            \(rows)</tbody></table>
            \(replicas.isEmpty ? "" : """
            <h2>Replicas</h2>
            <table id="replicas"><thead><tr><th>Replica of</th><th>Policy</th><th>Replica</th><th>Target</th><th>Last sync</th><th>Lag</th><th>Restore points</th><th>State</th></tr></thead>
            <tbody>
            \(replicas)</tbody></table>
            """)
            <h2>Backup sizes over time</h2>
            \(sizeChart(m.backups))
            <h2>Backup durations over time</h2>
            \(durationChart(m.timings))
            </body></html>

            """
    }

    static let width = 720.0, height = 220.0, pad = 44.0

    /// Bytes read (light) and newly stored (dark) per backup, oldest left, the last 60.
    static func sizeChart(_ all: [BackupRecord]) -> String {
        let backups = Array(all.suffix(60))
        guard !backups.isEmpty else { return "<p>No backup in the catalog yet.</p>" }
        let maxSize = Double(backups.map { max($0.size, $0.storedBytes) }.max() ?? 1).nonZero
        // At most 40 px a backup: a few backups still read as bars, not as blocks.
        let slot = min((width - 2 * pad) / Double(backups.count), 40)
        var bars = ""
        for (i, b) in backups.enumerated() {
            let x = pad + Double(i) * slot
            let full = (height - 2 * pad) * Double(b.size) / maxSize
            let stored = (height - 2 * pad) * Double(b.storedBytes) / maxSize
            let title = "\(b.vmName) \(b.kind) \(iso(b.createdAt)): size \(bytes(b.size)), stored \(bytes(b.storedBytes))"
            bars += "<g><title>\(esc(title))</title>"
                + "<rect x=\"\(fmt(x + 1))\" y=\"\(fmt(height - pad - full))\" width=\"\(fmt(max(slot - 2, 1)))\" height=\"\(fmt(full))\" fill=\"#90caf9\"/>"
                + "<rect x=\"\(fmt(x + 1))\" y=\"\(fmt(height - pad - stored))\" width=\"\(fmt(max(slot - 2, 1)))\" height=\"\(fmt(stored))\" fill=\"#1565c0\"/></g>"
        }
        return frame(id: "sizes", label: "backup sizes over time",
                     legend: "max \(bytes(Int64(maxSize))); light: size read, dark: newly stored", first: backups.first!.createdAt,
                     last: backups.last!.createdAt, body: bars)
    }

    /// Seconds per successful backup (from the run history), oldest left, the last 60.
    static func durationChart(_ all: [RunActionRecord]) -> String {
        let timings = Array(all.suffix(60))
        guard !timings.isEmpty else { return "<p>No timed backup in the history yet.</p>" }
        let seconds = timings.map { t in t.startedAt.map { max(0, t.at.timeIntervalSince($0)) } ?? 0 }
        let maxT = (seconds.max() ?? 1).nonZero
        let slot = min((width - 2 * pad) / Double(timings.count), 40)
        var points: [String] = []
        var dots = ""
        for (i, t) in timings.enumerated() {
            let cx = pad + (Double(i) + 0.5) * slot
            let cy = height - pad - (height - 2 * pad) * seconds[i] / maxT
            points.append("\(fmt(cx)),\(fmt(cy))")
            dots += "<circle cx=\"\(fmt(cx))\" cy=\"\(fmt(cy))\" r=\"3\" fill=\"#ef6c00\"><title>\(esc(t.vm ?? "?")) \(iso(t.at)): \(duration(seconds[i]))</title></circle>"
        }
        let line = "<polyline points=\"\(points.joined(separator: " "))\" fill=\"none\" stroke=\"#ef6c00\" stroke-width=\"1.5\"/>"
        return frame(id: "durations", label: "backup durations over time", legend: "max \(duration(maxT)) per backup", first: timings.first!.at,
                     last: timings.last!.at, body: line + dots)
    }

    static func frame(id: String, label: String, legend: String, first: Date, last: Date, body: String) -> String {
        """
        <svg id="\(id)" xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" role="img" aria-label="\(label)">
        <line x1="\(pad)" y1="\(height - pad)" x2="\(width - pad)" y2="\(height - pad)" stroke="#999"/>
        <line x1="\(pad)" y1="\(pad)" x2="\(pad)" y2="\(height - pad)" stroke="#999"/>
        <text x="\(pad)" y="\(pad - 12)" font-size="12">\(esc(legend))</text>
        <text x="\(pad)" y="\(height - pad + 16)" font-size="11">\(esc(iso(first)))</text>
        <text x="\(width - pad)" y="\(height - pad + 16)" font-size="11" text-anchor="end">\(esc(iso(last)))</text>
        \(body)
        </svg>
        """
    }

    static func iso(_ d: Date) -> String { ISO8601DateFormatter().string(from: d) }

    static func fmt(_ v: Double) -> String { String(format: "%.1f", v) }

    static func duration(_ s: Double) -> String {
        s < 120 ? String(format: "%.1f s", s) : s < 7200 ? "\(Int(s / 60)) min" : s < 172_800 ? "\(Int(s / 3600)) h" : "\(Int(s / 86400)) d"
    }

    static func bytes(_ n: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n)
        var i = 0
        while v >= 1024, i < units.count - 1 {
            v /= 1024
            i += 1
        }
        return i == 0 ? "\(n) B" : String(format: "%.1f", v) + " " + units[i]
    }

    static func esc(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }
}

extension Double {
    fileprivate var nonZero: Double { self > 0 ? self : 1 }
}
