import Foundation
import HavenCore

/// Renders a plan the way Terraform does: grouped by pool and VM, one line per action with its
/// symbol, the reason beneath, and a summary line.
enum PlanRenderer {
    static func text(_ plan: Plan, color: Bool) -> String {
        func paint(_ s: String, _ code: String) -> String { color ? "\u{1B}[\(code)m\(s)\u{1B}[0m" : s }
        func symbol(_ k: PlanAction.Kind) -> String {
            switch k.symbol {
            case "+": paint("+", "32")
            case "~": paint("~", "33")
            case "-": paint("-", "31")
            default: paint("!", "35")
            }
        }
        var out: [String] = []
        let pools = Array(Set(plan.actions.map(\.pool))).sorted()
        for pool in pools {
            out.append(paint("Pool \(pool)", "1"))
            let actions = plan.actions.filter { $0.pool == pool }
            for w in actions where w.kind == .warning {
                out.append("  \(symbol(.warning)) \(w.headline)")
                out.append("      \(w.reason)")
            }
            var seen: [String] = []
            for a in actions where a.kind != .warning && a.vm != nil && !seen.contains(a.vmUUID ?? "") {
                seen.append(a.vmUUID ?? "")
            }
            for vmUUID in seen {
                let list = actions.filter { $0.kind != .warning && $0.vmUUID == vmUUID }
                let policies = Array(Set(list.compactMap(\.policy))).sorted().joined(separator: ", ")
                out.append("  VM \(list[0].vm ?? vmUUID)" + (policies.isEmpty ? "" : " (\(policies))"))
                for a in list {
                    out.append("    \(symbol(a.kind)) \(a.headline)")
                    out.append("        \(a.reason)")
                }
            }
            for a in actions where a.kind != .warning && a.vm == nil {
                out.append("  \(symbol(a.kind)) \(a.headline)")
                out.append("      \(a.reason)")
            }
            out.append("")
        }
        if plan.actions.isEmpty { out.append("No changes. The pools match the configuration.") }
        out.append(plan.summary.line)
        return out.joined(separator: "\n")
    }

    static func json(_ plan: Plan) throws -> String {
        struct Output: Encodable {
            let formatVersion: Int
            let generatedAt: Date
            let fingerprint: String
            let summary: Plan.Summary
            let actions: [PlanAction]
            let inSync: Bool
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        let o = Output(formatVersion: plan.formatVersion, generatedAt: plan.generatedAt, fingerprint: plan.fingerprint, summary: plan.summary,
                       actions: plan.actions, inSync: plan.isEmpty)
        return String(decoding: try encoder.encode(o), as: UTF8.self)
    }

    static func save(_ plan: Plan, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        try encoder.encode(plan).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    static func load(_ path: String) throws -> Plan {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(Plan.self, from: try Data(contentsOf: URL(fileURLWithPath: path)))
    }
}
