import ArgumentParser
import Foundation
import HavenEngine

struct ReplicasCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replicas", abstract: "List or delete the replicas haven keeps.",
        subcommands: [ReplicasListCommand.self, ReplicasDeleteCommand.self], defaultSubcommand: ReplicasListCommand.self)
}

struct ReplicasListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "Per replica: last sync, lag behind the schedule, restore points, state.")

    @OptionGroup var options: EngineOptions

    @Option(help: "text or json.")
    var output: OutputFormat = .text

    func run() async throws {
        let desired = try options.loadDesired()
        let engine = try options.engine(desired)
        let now = currentTime()
        let list = try await engine.replicas(now: now)
        if output == .json {
            struct Out: Encodable {
                var formatVersion = 1
                var replicas: [ReplicaStatus]
            }
            let e = JSONEncoder()
            e.outputFormatting = [.prettyPrinted, .sortedKeys]
            e.dateEncodingStrategy = .iso8601
            print(String(decoding: try e.encode(Out(replicas: list)), as: UTF8.self))
            return
        }
        if list.isEmpty {
            print("No replicas.")
            return
        }
        let f = ISO8601DateFormatter()
        print(pad("POLICY", 12) + pad("VM", 14) + pad("REPLICA", 20) + pad("TARGET", 10) + pad("LAST SYNC (UTC)", 22) + pad("LAG", 8) + pad("POINTS", 8) + "STATE")
        for r in list {
            print(pad(r.policy, 12) + pad(r.vm, 14) + pad(r.replica.isEmpty ? r.replicaUUID : r.replica, 20) + pad(r.targetPool, 10)
                  + pad(r.lastSync.map { f.string(from: $0) } ?? "never", 22) + pad(r.lagSeconds.map { humanDuration($0) } ?? "-", 8)
                  + pad(r.restorePoints.map(String.init) ?? "-", 8) + r.state)
        }
    }
}

struct ReplicasDeleteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Delete a replica haven made, its restore points, and replication's CBT anchors on the source.",
        discussion: "A DR copy is never deleted implicitly: this is the command `haven diff` names when a ReplicationPolicy is removed.")

    @OptionGroup var options: EngineOptions

    @Argument(help: "The ReplicationPolicy (declared or removed).")
    var policy: String

    @Argument(help: "The source VM (name or uuid).")
    var vm: String

    @Flag(help: "Do not ask for confirmation.")
    var yes = false

    func run() async throws {
        let desired = try options.loadDesired()
        let engine = try options.engine(desired)
        if !yes {
            guard stdinIsTTY else { throw CLIError("not deleting: standard input is not a terminal; pass --yes") }
            print("Delete the replica of \(vm) kept by \(policy), with its restore points? Only 'yes' is accepted: ", terminator: "")
            fflush(nil)
            guard readLine()?.trimmingCharacters(in: .whitespaces) == "yes" else {
                print("Nothing deleted.")
                return
            }
        }
        for line in try await engine.deleteReplica(policy: policy, vm: vm) { print(line) }
    }
}
