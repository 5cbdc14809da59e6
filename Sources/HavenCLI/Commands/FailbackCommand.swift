import ArgumentParser
import Foundation
import HavenCore
import HavenEngine

/// `haven failback POLICY VM`: the fail-back that `reverse: true` plans, asked for once.
struct FailbackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "failback", abstract: "Send a failed-over replica's changes back onto the original VM and resume replication.",
        discussion: """
            After `haven failover POLICY VM`, plans the fail-back of that replica (what `reverse: true` on the policy \
            plans on every run): the original VM must be halted (a running original is never written; the plan says \
            so and waits). The plan shows each step: the replica snapshotted (its newest restore point), the blocks \
            it changed since the failover and those the original wrote after the last sync sent onto the original \
            (CBT on both sides), the original snapshotted as the next sync's anchor, the replica blocked again and \
            the failover closed. Shows the plan and asks on a terminal unless --auto-approve.

            Exit status: 0 when failed back, 1 when declined, 2 on any error or when nothing can be failed back.
            """)

    @OptionGroup var options: EngineOptions

    @Argument(help: "The ReplicationPolicy.")
    var policy: String

    @Argument(help: "The source VM (name or uuid).")
    var vm: String

    @Flag(help: "Do not ask for confirmation.")
    var autoApprove = false

    @Option(help: "Seconds to wait for another haven working on the pools (default: fail at once).")
    var lockTimeout: Double = 0

    func run() async throws {
        let desired = try options.loadDesired()
        guard let p = desired.replicationPolicies.first(where: { $0.name == policy }) else {
            throw CLIError("no ReplicationPolicy '\(policy)' is declared in \(options.config)" + didYouMean(policy, desired.replicationPolicies.map(\.name)), code: .usage)
        }
        let engine = try options.engine(desired)
        let scope = TargetScope(pools: Array(Set([p.spec.source.value, p.spec.target.pool.value])).sorted(), policies: [policy])
        let request = ReconcileRequest(scope: scope, lockTimeout: lockTimeout, now: { currentTime() }, failback: FailbackRequest(policy: policy, vm: vm))
        let approve = autoApprove
        let what = "\(vm) (ReplicationPolicy \(policy))"
        let run = try await RecordedRun.start(engine, request) { plan in
            print(PlanRenderer.text(plan, color: useColor))
            guard plan.actions.contains(where: { $0.kind == .failback }) else {
                throw CLIError("nothing to fail back for \(what): see the warnings above", code: .notFound)
            }
            return try RecordedRun.confirm("Fail back?", autoApprove: approve, notATerminal: "not failing back", cancelled: "Fail-back cancelled.")
        }
        let report = run.report
        run.recorder.finish(report, interrupted: run.interrupted)
        if report.plan.isEmpty {
            print(PlanRenderer.text(report.plan, color: useColor))
            throw CLIError("nothing to fail back for \(what)", code: .notFound)
        }
        guard report.approved else { throw HavenExit.changesPending }
        try ApplyCommand.printOutcome(report, title: "Fail-back", interrupted: run.interrupted, runID: run.recorder.id)
    }
}
