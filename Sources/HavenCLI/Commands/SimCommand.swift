import ArgumentParser
import Foundation
import HavenSim
import XenAPI

struct SimCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sim",
        abstract: "Run a simulated XenServer/XCP-ng pool on loopback, and act on it.",
        discussion: """
            `haven sim --world WORLD.yaml --state DIR` serves every pool of the world (XML-RPC, JSON-RPC, \
            HTTP data paths, NBD through nbdkit) until SIGTERM or SIGINT. State persists in DIR; when ready it \
            writes DIR/endpoints.json and prints one line per pool. The other subcommands act on a running \
            simulator through its state directory.
            """,
        subcommands: [SimRunCommand.self, SimWriteCommand.self, SimPowerCommand.self, SimFaultCommand.self],
        defaultSubcommand: SimRunCommand.self
    )
}

struct SimStateOption: ParsableArguments {
    @Option(name: .long, help: "State directory of the simulator.")
    var state: String

    @Option(name: .long, help: "Pool to act on (default: the first of the world).")
    var pool: String?

    var url: URL { URL(fileURLWithPath: state) }
}

struct SimRunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Serve the world's pools until stopped.")

    @Option(name: .long, help: "World file (YAML) declaring the pools.")
    var world: String

    @Option(name: .long, help: "State directory (created when missing; reused across restarts).")
    var state: String

    func run() throws {
        let world = try World.load(path: world)
        let sim = Simulator(world: world, stateDirectory: URL(fileURLWithPath: state))
        let endpoints: [PoolEndpoint]
        do {
            endpoints = try sim.start()
        } catch {
            sim.stop()
            FileHandle.standardError.write(Data("haven sim: \(error)\n".utf8))
            throw HavenExit.failure
        }
        for e in endpoints {
            let hosts = e.hosts.map(\.address).joined(separator: ",")
            let tls = e.fingerprint.isEmpty ? "tls=off" : "fingerprint=\(e.fingerprint)"
            print("pool \(e.name) master=\(e.masterURL) hosts=\(hosts) username=\(e.username) password=\(e.password) \(tls)")
        }
        print("endpoints written to \(URL(fileURLWithPath: state).appendingPathComponent("endpoints.json").path)")
        fflush(nil)
        SignalWaiter.wait(for: [SIGTERM, SIGINT])
        sim.stop()
    }
}

/// Blocks the calling thread until one of the signals arrives.
enum SignalWaiter {
    static func wait(for signals: [Int32]) {
        let semaphore = DispatchSemaphore(value: 0)
        var sources: [any DispatchSourceSignal] = []
        for s in signals {
            signal(s, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: s, queue: .global())
            source.setEventHandler { semaphore.signal() }
            source.resume()
            sources.append(source)
        }
        semaphore.wait()
        withExtendedLifetime(sources) {}
    }
}

struct SimWriteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "write", abstract: "Change a share of a VM disk's 64 KiB blocks, as a guest would (CBT sees it).")

    @OptionGroup var target: SimStateOption

    @Option(help: "VM name (or uuid).")
    var vm: String

    @Option(help: "Disk index, in userdevice order.")
    var disk: Int = 0

    @Option(help: "Share of the disk's 64 KiB blocks to rewrite, in percent.")
    var percent: Double

    enum Pattern: String, ExpressibleByArgument, CaseIterable { case random, clustered }

    @Option(help: "random: blocks spread over the disk; clustered: runs of neighbouring blocks.")
    var pattern: Pattern = .random

    @Option(help: "Seed, for repeatable writes.")
    var seed: Int64?

    @Option(help: "text, or json (the VDI and every block index written).")
    var output: OutputFormat = .text

    func validate() throws {
        guard percent > 0, percent <= 100 else { throw ValidationError("--percent must be in (0, 100]") }
    }

    func run() throws {
        var command: [String: XenValue] = [
            "command": "write", "vm": .string(vm), "disk": .int(Int64(disk)), "percent": .double(percent),
            "pattern": .string(pattern.rawValue),
        ]
        if let seed { command["seed"] = .int(seed) }
        let reply = try simControl(target, command)
        if output == .json {
            print(String(decoding: JSON.encode(reply), as: UTF8.self))
            return
        }
        let blocks = reply["blocks"]?.arrayValue?.count ?? 0
        print("wrote \(blocks) blocks of 64 KiB to disk \(disk) of \(vm) (VDI \(reply["vdi"]?.stringValue ?? ""))")
    }
}

struct SimPowerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "power", abstract: "Start or shut down a VM.")

    @OptionGroup var target: SimStateOption

    @Option(help: "VM name (or uuid).")
    var vm: String

    enum Action: String, ExpressibleByArgument, CaseIterable { case start, shutdown }

    @Argument(help: "start or shutdown.")
    var action: Action

    func run() throws {
        let reply = try simControl(target, ["command": "power", "vm": .string(vm), "action": .string(action.rawValue)])
        print("\(vm): \(reply["power_state"]?.stringValue ?? "?")")
    }
}

struct SimFaultCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fault", abstract: "Inject a fault into a running simulator, or clear them.",
        discussion: """
            Rules: error:METHOD:CODE[:P1,P2][@count=N|@p=0.3], latency:METHOD:250ms, session-expiry:30s (after 30 s unused), \
            nbd-drop:BYTES, failover:ADDRESS, task-fail:METHOD:CODE, sr-full:SR, deny-inbound (the pool's appliances \
            accept no connection from other appliances; name the pool with --pool), unreachable[@count=N] (the pool's \
            hosts close every connection unanswered; name the pool with --pool). Without --rule or --clear, \
            lists the active rules.
            """)

    @OptionGroup var target: SimStateOption

    @Option(help: "The rule to add.")
    var rule: String?

    @Flag(help: "Remove every rule.")
    var clear = false

    func run() throws {
        let command: [String: XenValue]
        if clear {
            command = ["command": "fault-clear"]
        } else if let rule {
            command = ["command": "fault", "rule": .string(rule)]
        } else {
            command = ["command": "faults"]
        }
        let reply = try simControl(target, command)
        let rules = reply["faults"]?.stringArray ?? []
        print(rules.isEmpty ? "no faults" : rules.joined(separator: "\n"))
    }
}

func simControl(_ target: SimStateOption, _ command: [String: XenValue]) throws -> XenValue {
    do {
        return try Simulator.control(stateDirectory: target.url, pool: target.pool, command)
    } catch {
        FileHandle.standardError.write(Data("haven sim: \(error)\n".utf8))
        throw HavenExit.failure
    }
}
