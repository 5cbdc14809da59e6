import ArgumentParser
import Foundation
import HavenEngine

struct FailoverCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "failover", abstract: "Make a replica the VM of record: revert it to a restore point and start it.",
        discussion: """
            Reverts the replica of VM (kept by ReplicationPolicy POLICY) to its newest restore point, or the one \
            given by --restore-point (uuid or name), or the newest at or before --at; lifts the block on starting it; \
            starts it unless --no-start; and records the failover: from then on no plan writes that replica.

            Exit status: 0 when done, 2 on any error.
            """)

    @OptionGroup var options: EngineOptions

    @Argument(help: "The ReplicationPolicy.")
    var policy: String

    @Argument(help: "The source VM (name or uuid).")
    var vm: String

    @Option(help: "Restore point to revert to (uuid or name); default: the newest.")
    var restorePoint: String?

    @Option(help: "The newest restore point at or before this time (ISO 8601).")
    var at: String?

    @Flag(help: "Revert and unblock, but do not start the replica.")
    var noStart = false

    @Option(help: "Seconds to wait for another haven working on the pools (default: fail at once).")
    var lockTimeout: Double = 0

    func run() async throws {
        let desired = try options.loadDesired()
        let engine = try options.engine(desired)
        var when: Date?
        if let at {
            guard let d = ISO8601DateFormatter().date(from: at) else { throw ValidationError("--at takes an ISO 8601 time such as 2026-12-01T03:00:00Z") }
            when = d
        }
        let o = try await engine.failover(policy: policy, vm: vm, restorePoint: restorePoint, at: when, start: !noStart, lockTimeout: lockTimeout,
                                          now: currentTime())
        print("failed over \(vm) to \(o.replicaName) on \(o.targetPool): reverted to restore point \(o.restorePoint) (\(o.restorePointTime))"
              + (o.started ? ", started" : ", not started (--no-start)"))
        print("from now on haven never writes this replica; it is the VM of record")
    }
}
