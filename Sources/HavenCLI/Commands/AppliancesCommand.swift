import ArgumentParser
import Foundation
import HavenEngine

struct AppliancesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "appliances", abstract: "List the data-mover appliances haven keeps, or diagnose their connections.",
        subcommands: [AppliancesListCommand.self, AppliancesDiagCommand.self], defaultSubcommand: AppliancesListCommand.self)
}

struct AppliancesListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "Per appliance: pool, AppliancePool, address (static or DHCP), power, idle or in use, certificate pin.")

    @OptionGroup var options: EngineOptions

    @Argument(help: "A Pool or an AppliancePool (default: every pool).")
    var pool: String?

    @Option(help: "text or json.")
    var output: OutputFormat = .text

    func run() async throws {
        let engine = try options.engine(try options.loadDesired())
        let list = try await engine.appliances(pool)
        if output == .json {
            struct Out: Encodable {
                var formatVersion = 1
                var appliances: [ApplianceStatus]
            }
            let e = JSONEncoder()
            e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try e.encode(Out(appliances: list)), as: UTF8.self))
            return
        }
        if list.isEmpty {
            print("No appliances.")
            return
        }
        print(pad("NAME", 18) + pad("POOL", 10) + pad("APPLIANCEPOOL", 15) + pad("ADDRESS", 26) + pad("POWER", 9) + pad("USE", 8) + "PIN")
        for a in list {
            let address = "\(a.address ?? "-") (\(a.addressing == "static" ? "static" : "DHCP"))"
            let pin = a.pin.isEmpty ? "-" : String(a.pin.prefix(23)) + (a.pin.count > 23 ? "…" : "")
            print(pad(a.name, 18) + pad(a.pool, 10) + pad(a.appliancePool, 15) + pad(address, 26) + pad(a.power.lowercased(), 9) + pad(a.use, 8) + pin)
            for p in a.problems { print("  ! \(p)") }
        }
    }
}

struct AppliancesDiagCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diag", abstract: "Check the appliances of a pool: address, haven → appliance on 2811, appliance → haven, the peer appliance, names.",
        discussion: "One line per check, with what to fix. Exits 2 when a check fails. Nothing on the pool is changed.")

    @OptionGroup var options: EngineOptions

    @Argument(help: "A Pool or an AppliancePool.")
    var pool: String

    @Option(help: "text or json.")
    var output: OutputFormat = .text

    func run() async throws {
        let engine = try options.engine(try options.loadDesired())
        let checks = try await engine.diagnoseAppliances(pool)
        let failed = checks.filter { $0.status == .failed }.count
        if output == .json {
            struct Out: Encodable {
                var formatVersion = 1
                var ok: Bool
                var checks: [ApplianceCheck]
            }
            let e = JSONEncoder()
            e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try e.encode(Out(ok: failed == 0, checks: checks)), as: UTF8.self))
        } else {
            let names = ["setup": "setup", "address": "address", "haven-to-appliance": "haven → appliance", "appliance-to-haven": "appliance → haven",
                         "peer": "peer appliance", "name-resolution": "name resolution"]
            for c in checks {
                let mark = c.status == .ok ? "✔" : c.status == .failed ? "✘" : "-"
                print("\(mark) \(pad(c.subject, 18)) \(pad(names[c.check] ?? c.check, 18)) \(c.detail)" + (c.fix.map { "; fix: \($0)" } ?? ""))
            }
            print(failed == 0 ? "All checks passed." : "\(failed) check\(failed == 1 ? "" : "s") failed.")
        }
        if failed > 0 { throw HavenExit.failure }
    }
}
