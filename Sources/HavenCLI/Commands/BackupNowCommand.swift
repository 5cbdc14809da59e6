import ArgumentParser
import Foundation
import HavenCore
import HavenEngine

struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup", abstract: "Back up now, whatever the schedule.", subcommands: [BackupNowCommand.self])
}

/// Xen Orchestra's "Run now": the same reconcile as `apply`, with the chosen backups due now.
struct BackupNowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "now", abstract: "Back up a policy's VMs (or one VM) now, whatever the schedule.",
        discussion: """
            Plans a backup of every VM POLICY selects (or only --vm NAME, in POLICY or in every policy that selects \
            it), due or not, and runs it at once through the same reconcile as `haven apply`: within each pool's lock \
            and limits, with the policy's retention applied afterwards. Incremental when a CBT anchor or a delta base allows it; \
            --full reads every disk whole. Nothing is cleaned up beyond the policy. The plan is printed, not asked \
            about: asking for a backup is the approval. A suspended policy is refused.

            Exit status: 0 when every backup succeeded, 2 when anything failed, a pool could not be read, or \
            nothing matched.
            """)

    @OptionGroup var options: EngineOptions

    @Argument(help: "The BackupPolicy whose VMs to back up.")
    var policy: String?

    @Option(help: "Only this VM (name or uuid).")
    var vm: String?

    @Flag(help: "Read every disk whole, ignoring CBT anchors and delta bases.")
    var full = false

    @Option(help: "Seconds to wait for another haven working on the same pool (default: fail at once).")
    var lockTimeout: Double = 0

    func validate() throws {
        if policy == nil && vm == nil { throw ValidationError("name a POLICY, or a VM with --vm NAME") }
        if options.target != nil { throw ValidationError("backup now takes POLICY and --vm, not --target") }
    }

    func run() async throws {
        let desired = try options.loadDesired()
        let engine = try options.engine(desired)
        // `haven suspend` counts as `suspend: true`.
        let byCommand = Set(try engine.catalog.suspensions().map(\.policy))
        var chosen = desired.backupPolicies.map { p in
            var p = p
            if byCommand.contains(p.name) { p.spec.suspend = true }
            return p
        }
        if let policy {
            guard let p = chosen.first(where: { $0.name == policy }) else {
                throw CLIError("no BackupPolicy '\(policy)' is declared in \(options.config)" + didYouMean(policy, desired.backupPolicies.map(\.name)), code: .usage)
            }
            if p.spec.suspend {
                let how = byCommand.contains(policy) ? "by `haven suspend`; `haven resume \(policy)` undoes it" : "spec.suspend: true"
                throw CLIError("BackupPolicy \(policy) is suspended (\(how)); nothing was backed up", code: .usage)
            }
            chosen = [p]
        } else {
            chosen = chosen.filter { !$0.spec.suspend }
            guard !chosen.isEmpty else { throw CLIError("every BackupPolicy is suspended; nothing was backed up", code: .usage) }
        }
        let scope = TargetScope(pools: Array(Set(chosen.map(\.spec.pool.value))).sorted(), policies: Set(chosen.map(\.name)))
        let request = ReconcileRequest(scope: scope, lockTimeout: lockTimeout, now: { currentTime() },
                                       forceBackup: ForceBackup(policy: policy, vm: vm, full: full))
        let what = vm.map { "VM \($0)" + (policy.map { " in BackupPolicy \($0)" } ?? "") } ?? "BackupPolicy \(policy ?? "")"
        let run = try await RecordedRun.start(engine, request) { plan in
            guard plan.actions.contains(where: { $0.kind == .backup }) else {
                throw CLIError("nothing to back up for \(what): no VM matched (or all its disks are excluded)")
            }
            print(PlanRenderer.text(plan, color: useColor))
            return true
        }
        let report = run.report
        if report.plan.isEmpty {
            print(PlanRenderer.text(report.plan, color: useColor))
            let why = report.unreachable.isEmpty ? "no VM matched (or all its disks are excluded)"
                : report.unreachable.sorted { $0.key < $1.key }.map { "pool \($0.key) cannot be read: \($0.value)" }.joined(separator: "; ")
            let error = CLIError("nothing was backed up for \(what): \(why)", code: .notFound)
            run.recorder.finish(error: error)
            throw error
        }
        run.recorder.finish(report, interrupted: run.interrupted)
        try ApplyCommand.printOutcome(report, title: "Backup", interrupted: run.interrupted, runID: run.recorder.id)
    }
}
