import Foundation
import HavenCore

/// Renders a plan the way Terraform does: grouped by pool and VM, one line per action with its
/// symbol, the reason beneath, and a summary line.
enum PlanRenderer {
    static func text(_ plan: Plan, color: Bool) -> String {
        func paint(_ s: String, _ code: String) -> String { color ? "\u{1B}[\(code)m\(s)\u{1B}[0m" : s }
        func symbol(_ k: ActionKind) -> String {
            switch k.symbol {
            case "+": paint("+", "32")
            case "~": paint("~", "33")
            default: paint("-", "31")
            }
        }
        let order = Dictionary(uniqueKeysWithValues: plan.actions.enumerated().map { ($1.key, $0) })
        func requirement(_ a: PlannedAction) -> String? {
            let needs = a.requires.compactMap { plan.action($0) }.filter { $0.vm?.uuid != a.vm?.uuid || $0.kind != .backup }
            guard !needs.isEmpty else { return a.requires.isEmpty ? nil : "only if the backup above succeeds" }
            return "only if " + needs.map { "'\($0.headline)'" }.joined(separator: " and ") + " succeeds"
        }
        var out: [String] = []
        let pools = Array(Set(plan.actions.map(\.pool)).union(plan.warnings.map(\.pool))).sorted()
        for pool in pools {
            out.append(paint("Pool \(pool)", "1"))
            for w in plan.warnings where w.pool == pool {
                out.append(w.isError ? "  \(paint("✘", "31")) error: \(w.message)" : "  \(paint("!", "35")) \(w.message)")
                out.append("      \(w.reason)")
            }
            let actions = plan.actions.filter { $0.pool == pool }.sorted { ($0.kind, order[$0.key] ?? 0) < ($1.kind, order[$1.key] ?? 0) }
            var seen: [String] = []
            for a in actions where a.vm != nil && !seen.contains(a.vm!.uuid) { seen.append(a.vm!.uuid) }
            for vmUUID in seen {
                let list = actions.filter { $0.vm?.uuid == vmUUID }
                let policies = Array(Set(list.compactMap(\.policy))).sorted().joined(separator: ", ")
                out.append("  VM \(list[0].vm?.name ?? vmUUID)" + (policies.isEmpty ? "" : " (\(policies))"))
                for a in list {
                    out.append("    \(symbol(a.kind)) \(a.headline)")
                    out.append("        \(a.reason)" + (requirement(a).map { "; \($0)" } ?? ""))
                }
            }
            for a in actions where a.vm == nil {
                out.append("  \(symbol(a.kind)) \(a.headline)")
                out.append("      \(a.reason)")
            }
            out.append("")
        }
        if plan.actions.isEmpty {
            // A pool that could not be read is not known to match: never say it does.
            out.append(plan.summary.errors == 0 ? "No changes. The pools match the configuration."
                                                : "No changes planned, but what the errors above name could not be planned: it is not known to match the configuration.")
        }
        out.append(plan.summary.line)
        return out.joined(separator: "\n")
    }

    static func json(_ plan: Plan) throws -> String {
        struct Output: Encodable {
            let formatVersion: Int
            let generatedAt: Date
            let fingerprint: String
            let scope: PlanScope
            let summary: Plan.Summary
            let actions: [PlannedAction]
            let warnings: [PlanWarning]
            let inSync: Bool
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        let o = Output(formatVersion: plan.formatVersion, generatedAt: plan.generatedAt, fingerprint: plan.fingerprint, scope: plan.scope,
                       summary: plan.summary, actions: plan.actions, warnings: plan.warnings, inSync: plan.isEmpty)
        return String(decoding: try encoder.encode(o), as: UTF8.self)
    }

    static func save(_ plan: Plan, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        try encoder.encode(plan).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    static func load(_ path: String) throws -> Plan {
        guard FileManager.default.fileExists(atPath: path) else { throw CLIError("no such file", code: .io) }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(Plan.self, from: try Data(contentsOf: URL(fileURLWithPath: path)))
    }
}
