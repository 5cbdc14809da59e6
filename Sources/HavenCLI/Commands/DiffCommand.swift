import ArgumentParser
import Foundation
import HavenCore
import HavenEngine

struct DiffCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff", abstract: "Show what `haven apply` would change, and why.",
        discussion: """
            Reads the configuration, the pools (one get_all_records per class) and the catalog, and prints \
            the plan: + create, ~ change, - destroy, ! warning, grouped by pool and VM, each with its reason.

            Exit status: 0 when the pools match the configuration, 1 when changes are pending, 2 on error.
            """)

    @OptionGroup var options: EngineOptions

    @Option(help: "text or json (a stable, versioned format).")
    var output: OutputFormat = .text

    @Option(name: .customLong("out"), help: "Also save the plan to this file, for `haven apply PLAN`.")
    var planFile: String?

    func run() async throws {
        let desired = options.loadDesired()
        let engine = options.engine(desired)
        let scope = options.scope(desired)
        let plan: Plan
        do {
            let observed = try await engine.observe(pools: scope.pools)
            plan = try engine.plan(observed: observed, now: currentTime(), scope: scope.policies)
        } catch {
            fail("\(error)")
        }
        await engine.logout()
        if let planFile {
            do { try PlanRenderer.save(plan, to: planFile) } catch { fail("cannot write \(planFile): \(error)") }
        }
        switch output {
        case .json: print(try PlanRenderer.json(plan))
        case .text: print(PlanRenderer.text(plan, color: stdoutIsTTY))
        }
        if !plan.isEmpty { throw HavenExit.changesPending }
    }
}
