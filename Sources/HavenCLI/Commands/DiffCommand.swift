import ArgumentParser
import Foundation
import HavenCore
import HavenEngine

struct DiffCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff", abstract: "Show what `haven apply` would change, and why.",
        discussion: """
            Reads the configuration, the pools (one get_all_records per class, each pool on its own) and the \
            catalog, and prints the plan: + create, ~ change, - destroy, ! warning, grouped by pool and VM, each \
            with its reason. A pool that cannot be read is reported; the others are planned.

            Exit status: 0 when the pools match the configuration, 1 when changes are pending, 2 on error \
            (a pool that cannot be read included).
            """)

    @OptionGroup var options: EngineOptions

    @Option(help: "text or json (a stable, versioned format).")
    var output: OutputFormat = .text

    @Option(name: .customLong("out"), help: "Also save the plan to this file, for `haven apply PLAN`.")
    var planFile: String?

    func run() async throws {
        let desired = try options.loadDesired()
        let engine = try options.engine(desired)
        let scope = try options.scope(desired)
        let (plan, unreachable) = try await engine.withSessions {
            let observation = await engine.observe(pools: scope.pools)
            return (try engine.plan(observation, now: currentTime(), scope: scope.policies), observation.unreachable)
        }
        if let planFile {
            do { try PlanRenderer.save(plan, to: planFile) } catch { throw CLIError("cannot write \(planFile): \(error)", code: .io) }
        }
        switch output {
        case .json: print(try PlanRenderer.json(plan))
        case .text: print(PlanRenderer.text(plan, color: useColor))
        }
        if !unreachable.isEmpty || !plan.errors.isEmpty { throw HavenExit.failure }
        if !plan.isEmpty { throw HavenExit.changesPending }
    }
}
