import Foundation
import HavenCore

/// The status page: server-rendered HTML, no script. Every protected VM with its last good backup,
/// next due time, RPO (colour and word, so it reads without colour too) and last error; an inline
/// SVG chart of backup sizes over time from the catalog, and durations seen by this daemon.
enum StatusPage {
    static func html(_ doc: StatusDocument) -> String {
        let f = DateFormatter()
        f.dateFormat = "yyyy-MM-dd HH:mm:ss"
        f.timeZone = TimeZone(identifier: "UTC")
        func date(_ d: Date?) -> String { d.map { f.string(from: $0) + " UTC" } ?? "never" }
        var rows = ""
        for r in doc.vms {
            let rpo = r.suspended ? ("suspended", "suspended") : r.rpoMet ? ("met", "met") : ("missed", "MISSED")
            let lastError = r.lastAttempt.flatMap { $0.result == "succeeded" ? nil : "\($0.result): \($0.message)" } ?? ""
            rows += """
                <tr><td>\(esc(r.pool))</td><td>\(esc(r.vm))</td><td>\(esc(r.policy))</td><td>\(date(r.lastBackup))</td>\
                <td>\(r.suspended ? "-" : date(r.nextDue))</td><td>\(r.versions)</td>\
                <td class="rpo \(rpo.0)">\(rpo.1)</td><td class="err">\(esc(lastError))</td></tr>

                """
        }
        if doc.vms.isEmpty { rows = "<tr><td colspan=\"8\">No protected VM observed yet.</td></tr>\n" }
        let d = doc.daemon
        var banner = ""
        if !d.config.errors.isEmpty {
            banner = "<div class=\"banner\"><strong>The newest configuration has errors</strong>; acting on the last good one (generation \(d.config.generation)):<pre>"
                + d.config.errors.map(esc).joined(separator: "\n") + "</pre></div>"
        }
        for (pool, why) in d.unreachablePools.sorted(by: { $0.key < $1.key }) {
            banner += "<div class=\"banner\">Pool <strong>\(esc(pool))</strong> cannot be read: \(esc(why))</div>"
        }
        let last = d.lastReconcile.map { "last reconcile \(esc($0.result)) at \(date($0.endedAt)): \(esc($0.message))" } ?? "no reconcile yet"
        let running = d.running.map { "<li>\(esc($0.pool)): \(esc($0.what)) since \(date($0.startedAt))</li>" }.joined()
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="15">
            <title>haven status</title>
            <style>
            body{font-family:system-ui,sans-serif;margin:2em;color:#222}
            table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
            .rpo.met{color:#fff;background:#2e7d32}.rpo.missed{color:#fff;background:#c62828}.rpo.suspended{background:#ddd}
            .err{color:#c62828;max-width:40em}.banner{background:#fff3e0;border-left:4px solid #ef6c00;padding:.5em 1em;margin:.5em 0}
            .meta{color:#666}
            </style></head><body>
            <h1>haven</h1>
            <p class="meta">\(esc(d.role.rawValue)); configuration generation \(d.config.generation) from \(esc(d.config.directory)); \(last)\
            \(doc.rpoMissed ? "; <strong>RPO missed</strong>" : "")</p>
            \(banner)
            \(running.isEmpty ? "" : "<h2>Running</h2><ul>\(running)</ul>")
            <h2>Protected VMs</h2>
            <table><thead><tr><th>Pool</th><th>VM</th><th>Policy</th><th>Last good backup</th><th>Next due</th><th>Versions</th><th>RPO</th><th>Last error</th></tr></thead>
            <tbody>
            \(rows)</tbody></table>
            <h2>Backups over time</h2>
            \(chart(doc))
            </body></html>

            """
    }

    /// Stored bytes (bars) and, where this daemon timed them, durations (dots) per backup, oldest left.
    static func chart(_ doc: StatusDocument) -> String {
        let backups = doc.backups.suffix(60)
        guard !backups.isEmpty else { return "<p>No backup in the catalog yet.</p>" }
        let w = 720.0, h = 200.0, pad = 40.0
        let maxSize = Double(backups.map { max($0.size, $0.storedBytes) }.max() ?? 1).nonZero
        let slot = (w - 2 * pad) / Double(backups.count)
        var bars = ""
        for (i, b) in backups.enumerated() {
            let x = pad + Double(i) * slot
            let full = (h - 2 * pad) * Double(b.size) / maxSize
            let stored = (h - 2 * pad) * Double(b.storedBytes) / maxSize
            let title = "\(b.vmName) \(b.kind) \(ISO8601DateFormatter().string(from: b.createdAt)): size \(bytes(b.size)), stored \(bytes(b.storedBytes))"
            bars += "<g><title>\(esc(title))</title>"
                + "<rect x=\"\(fmt(x + 1))\" y=\"\(fmt(h - pad - full))\" width=\"\(fmt(max(slot - 2, 1)))\" height=\"\(fmt(full))\" fill=\"#90caf9\"/>"
                + "<rect x=\"\(fmt(x + 1))\" y=\"\(fmt(h - pad - stored))\" width=\"\(fmt(max(slot - 2, 1)))\" height=\"\(fmt(stored))\" fill=\"#1565c0\"/></g>"
        }
        var dots = ""
        let timings = doc.timings.suffix(60)
        if let maxT = timings.map(\.seconds).max(), maxT > 0 {
            let tslot = (w - 2 * pad) / Double(timings.count)
            for (i, t) in timings.enumerated() {
                let cx = pad + (Double(i) + 0.5) * tslot
                let cy = h - pad - (h - 2 * pad) * t.seconds / maxT
                dots += "<circle cx=\"\(fmt(cx))\" cy=\"\(fmt(cy))\" r=\"3\" fill=\"#ef6c00\"><title>\(esc(t.vm)): \(fmt(t.seconds)) s</title></circle>"
            }
        }
        return """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" role="img" aria-label="backup sizes over time">
            <line x1="\(pad)" y1="\(h - pad)" x2="\(w - pad)" y2="\(h - pad)" stroke="#999"/>
            <text x="\(pad)" y="\(pad - 10)" font-size="12">max \(bytes(Int64(maxSize))); light: size read, dark: stored, dots: duration (this daemon)</text>
            \(bars)\(dots)
            </svg>
            """
    }

    static func fmt(_ v: Double) -> String { String(format: "%.1f", v) }

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
