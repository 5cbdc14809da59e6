import Foundation
import XenAPI

/// Injected misbehaviour, written as rules:
///
/// - `error:METHOD:CODE[:P1,P2…][@count=N|@p=0.3]` — the call fails with that xapi error
///   (`METHOD` may be `*`); N times, or with probability p, or always.
/// - `latency:METHOD:DURATION` — the call waits that long first (`250ms`, `2s`).
/// - `session-expiry:DURATION` — sessions become invalid that long after login.
/// - `nbd-drop:BYTES` — an NBD connection is cut after that many bytes were served.
/// - `failover:ADDRESS` — the master role moves to the host with that address.
/// - `task-fail:METHOD:CODE` — the task of a call of METHOD fails with CODE: an `Async.` call's
///   task fails halfway; a synchronous call (which xapi also runs in a task) fails with CODE.
/// - `sr-full:SR` — calls that allocate on the SR named SR fail with SR_FULL.
/// - `deny-inbound` — the pool's appliances accept no connection from outside their site (a DR
///   site that only connects outward): other appliances cannot reach their movers; haven, whose
///   connections come from 127.0.0.1, still can; their own outbound connections still work.
/// - `upload-cut:BYTES[@count=N]` — an upload to `/import_raw_vdi` is cut after BYTES bytes of
///   its body, as a link that drops mid-transfer: what arrived is written (a VHD's blocks before
///   the cut are on the VDI, and CBT logged them), the task fails, and the connection closes
///   without an answer.
/// - `unreachable[@count=N]` — the pool's hosts close every HTTP connection without an answer
///   (XenAPI calls and data paths; a transfer already streaming goes on), as a site whose
///   link is cut; the simulator's control endpoint still answers, so the rule can be cleared.
struct FaultRule: Codable, Hashable, Sendable {
    enum Kind: String, Codable, Sendable { case error, latency, sessionExpiry, nbdDrop, failover, taskFail, srFull, denyInbound, unreachable, uploadCut }

    var kind: Kind
    var method: String = "*"
    var code: String = ""
    var parameters: [String] = []
    var remaining: Int?
    var probability: Double?
    var seconds: Double = 0
    var bytes: Int64 = 0
    var target: String = ""
    var text: String

    static func parse(_ text: String) throws -> FaultRule {
        var body = text
        var remaining: Int?
        var probability: Double?
        if let at = text.lastIndex(of: "@") {
            body = String(text[..<at])
            let mod = text[text.index(after: at)...]
            if mod.hasPrefix("count="), let n = Int(mod.dropFirst(6)), n > 0 {
                remaining = n
            } else if mod.hasPrefix("p="), let p = Double(mod.dropFirst(2)), (0...1).contains(p) {
                probability = p
            } else {
                throw SimError("fault '\(text)': '@\(mod)' must be @count=N or @p=P")
            }
        }
        let parts = body.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        func need(_ n: Int, _ form: String) throws {
            guard parts.count >= n else { throw SimError("fault '\(text)': expected \(form)") }
        }
        var rule = FaultRule(kind: .error, text: text)
        rule.remaining = remaining
        rule.probability = probability
        switch parts[0] {
        case "error":
            try need(3, "error:METHOD:CODE[:P1,P2]")
            rule.method = parts[1]
            rule.code = parts[2]
            rule.parameters = parts.count > 3 ? parts[3].split(separator: ",").map(String.init) : []
        case "latency":
            try need(3, "latency:METHOD:DURATION")
            rule.kind = .latency
            rule.method = parts[1]
            rule.seconds = try duration(parts[2])
        case "session-expiry":
            try need(2, "session-expiry:DURATION")
            rule.kind = .sessionExpiry
            rule.seconds = try duration(parts[1])
        case "nbd-drop":
            try need(2, "nbd-drop:BYTES")
            rule.kind = .nbdDrop
            guard let b = Int64(parts[1]) else { throw SimError("fault '\(text)': BYTES must be a number") }
            rule.bytes = b
        case "upload-cut":
            try need(2, "upload-cut:BYTES")
            rule.kind = .uploadCut
            guard let b = Int64(parts[1]), b >= 0 else { throw SimError("fault '\(text)': BYTES must be a number") }
            rule.bytes = b
        case "failover":
            try need(2, "failover:ADDRESS")
            rule.kind = .failover
            rule.target = parts[1]
        case "task-fail":
            try need(3, "task-fail:METHOD:CODE")
            rule.kind = .taskFail
            rule.method = parts[1]
            rule.code = parts[2]
        case "sr-full":
            try need(2, "sr-full:SR")
            rule.kind = .srFull
            rule.target = parts[1...].joined(separator: ":")
        case "deny-inbound":
            guard parts.count == 1 else { throw SimError("fault '\(text)': deny-inbound takes no argument (name the pool with --pool)") }
            rule.kind = .denyInbound
        case "unreachable":
            guard parts.count == 1 else { throw SimError("fault '\(text)': unreachable takes no argument (name the pool with --pool)") }
            rule.kind = .unreachable
        default:
            throw SimError("fault '\(text)': unknown kind '\(parts[0])' (error, latency, session-expiry, nbd-drop, upload-cut, failover, task-fail, sr-full, deny-inbound, unreachable)")
        }
        return rule
    }

    static func duration(_ text: String) throws -> Double {
        if text.hasSuffix("ms"), let n = Double(text.dropLast(2)) { return n / 1000 }
        if text.hasSuffix("s"), let n = Double(text.dropLast()) { return n }
        if text.hasSuffix("m"), let n = Double(text.dropLast()) { return n * 60 }
        throw SimError("'\(text)' is not a duration (use 250ms, 2s, 1m)")
    }

    func matches(_ method: String) -> Bool { self.method == "*" || self.method == method }
}
