import Foundation
import HavenCore
import HavenEngine
import HavenSpec
import Testing

@testable import HavenSim
@testable import XenAPI

/// The ownership property, on random pools and random configurations: whatever haven is told to
/// do, over several reconciles with guest writes, faults and cancelled runs between them, every
/// object that was on the pool before haven came is unchanged afterwards — field for field,
/// except the lists of snapshots and operations in flight, and CBT on a disk a policy protects
/// (switched on with haven's mark, switched off again when no policy wants it any more). The
/// pools hold the user's look-alikes: VMs named like haven's snapshots and replicas, snapshots
/// named like haven's, VMs and disks carrying haven's keys, even this instance's own id, CBT a
/// user switched on.
///
/// `HAVEN_PROPERTY_SEEDS` sets the number of seeds (3 in `make test`, more in `make reliability`).
@Suite(.serialized) struct OwnershipPropertyTests {
    static let seeds: [UInt64] = {
        let n = Int(ProcessInfo.processInfo.environment["HAVEN_PROPERTY_SEEDS"] ?? "") ?? 3
        return (0..<max(1, n)).map { UInt64($0) &* 0x9E37_79B9 &+ 17 }
    }()

    /// SplitMix64, so that a failing seed replays exactly.
    struct Rng: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &self) < p }
    }

    static let instance = "00000000-property-test-instance"

    struct VMPlan {
        var name: String
        var running: Bool
        var tags: [String]
        var otherConfig: [String: String]
        var disks: Int
    }

    /// A random world: 3–6 VMs, some named or marked like haven's objects.
    static func randomVMs(_ rng: inout Rng) -> [VMPlan] {
        let names = ["web", "db", "mail", "build", "haven daily web", "replica-web", "haven-abd"].shuffled(using: &rng)
        let marks: [[String: String]] = [
            [:], [:], [:],
            ["haven.owner": "someone-else", "haven.role": "backup-snapshot", "haven.policy": "p0"],
            ["haven.owner": instance, "haven.role": "replica", "haven.policy": "p0", "haven.source": "forged"],
            ["haven.role": "appliance"],
        ]
        return (0..<Int.random(in: 3...6, using: &rng)).map { i in
            VMPlan(name: names[i], running: rng.chance(0.6), tags: ["prod", "test"].filter { _ in rng.chance(0.4) },
                   otherConfig: marks.randomElement(using: &rng)!, disks: Int.random(in: 1...2, using: &rng))
        }
    }

    static func world(_ vms: [VMPlan], prefix: String, seed: UInt64) -> String {
        var out = """
            pools:
              - name: lab
                port: 4443
                credentials: {username: root, password: property-pw}
                hosts:
                  - {name: h1, address: "\(prefix).1"}
                srs: [{name: Local storage, type: ext, size: 64Gi, default: true}, {name: Replica storage, type: ext, size: 64Gi}]
                networks: [{name: net0, purpose: [nbd]}]
                vms:

            """
        for (i, vm) in vms.enumerated() {
            let oc = vm.otherConfig.sorted { $0.key < $1.key }.map { "\"\($0.key)\": \"\($0.value)\"" }.joined(separator: ", ")
            let disks = (0..<vm.disks).map { d in "{name: \"\(vm.name)-\(d)\", size: 1Mi, fill: {seed: \(seed % 1000 + UInt64(i * 10 + d))}}" }
            out += """
                      - name: "\(vm.name)"
                        power: \(vm.running ? "Running" : "Halted")
                        tags: [\(vm.tags.joined(separator: ", "))]
                        other_config: {\(oc)}
                        disks: [\(disks.joined(separator: ", "))]

                """
        }
        return out
    }

    /// A random configuration: 0–2 backup policies and maybe a replication, over random subsets.
    static func randomSpec(_ rng: inout Rng, vms: [VMPlan], prefix: String, dir: URL, caFile: String) -> String {
        var docs = [
            """
            apiVersion: haven/v1
            kind: Pool
            metadata: {name: lab}
            spec:
              url: https://\(prefix).1:4443
              credentials: {username: root, passwordFile: \(dir.path)/password}
              tls: {caFile: \(caFile)}
            """,
            "apiVersion: haven/v1\nkind: Repository\nmetadata: {name: local}\nspec: {path: \(dir.path)/repo}\n",
        ]
        var free = vms.map(\.name).shuffled(using: &rng)
        for p in 0..<Int.random(in: 0...2, using: &rng) where !free.isEmpty {
            let take = Array(free.prefix(Int.random(in: 1...min(2, free.count), using: &rng)))
            free.removeFirst(take.count)
            let selector = rng.chance(0.2) && p == 0 ? "{tags: [prod], names: [\(take.map { "\"\($0)\"" }.joined(separator: ", "))]}"
                : "{names: [\(take.map { "\"\($0)\"" }.joined(separator: ", "))]}"
            let method = ["auto", "cbt", "delta", "auto"].randomElement(using: &rng)!
            docs.append("""
                apiVersion: haven/v1
                kind: BackupPolicy
                metadata: {name: p\(p)}
                spec:
                  pool: lab
                  vms: \(selector)
                  schedule: {every: 1h}
                  method: \(method)
                  cbt: \(method == "delta" ? "false" : method == "cbt" ? "true" : (rng.chance(0.8) ? "true" : "false"))
                  repository: local
                  retention: {keepLast: \(Int.random(in: 1...2, using: &rng))}
                  snapshotRetention: \(Int.random(in: 0...1, using: &rng))
                """)
        }
        if rng.chance(0.4), let vm = free.first {
            docs.append("""
                apiVersion: haven/v1
                kind: ReplicationPolicy
                metadata: {name: dr}
                spec: {source: lab, vms: {names: ["\(vm)"]}, target: {pool: lab, sr: Replica storage}, schedule: {every: 1h}, keep: 1}
                """)
        }
        return docs.joined(separator: "\n---\n")
    }

    /// Every VM, VDI and VBD record by uuid, and for each VDI the name of the VM it is a disk of.
    struct Objects {
        var vms: [String: [String: XenValue]] = [:]
        var vdis: [String: [String: XenValue]] = [:]
        var vbds: [String: [String: XenValue]] = [:]
        var diskOf: [String: String] = [:]
    }

    /// The full records, as the pool sends them (every field, not only those the typed records keep).
    static func objects(_ c: XenAPIClient) async throws -> Objects {
        func raw(_ cls: String) async throws -> [String: [String: XenValue]] {
            (try await c.call(XenMethod.getAllRecords(cls), []).structValue ?? [:]).mapValues { $0.structValue ?? [:] }
        }
        var o = Objects()
        let vms = try await raw("VM")
        let vdis = try await raw("VDI")
        for r in vms.values { o.vms[r["uuid"]?.stringValue ?? ""] = r }
        for r in vdis.values { o.vdis[r["uuid"]?.stringValue ?? ""] = r }
        for r in try await raw("VBD").values {
            o.vbds[r["uuid"]?.stringValue ?? ""] = r
            if let vm = vms[r["VM"]?.stringValue ?? ""], vm["is_a_snapshot"]?.boolValue == false, vm["is_a_template"]?.boolValue == false,
               vm["is_control_domain"]?.boolValue == false, let vdi = vdis[r["VDI"]?.stringValue ?? ""] {
                o.diskOf[vdi["uuid"]?.stringValue ?? ""] = vm["name_label"]?.stringValue ?? ""
            }
        }
        return o
    }

    /// The VMs a selector picks among the world's (names, tags, exclude: what the specs here use).
    static func selected(_ sel: VMSelector, _ vms: [VMPlan]) -> [String] {
        vms.filter { v in (sel.names.contains { $0.value == v.name } || !Set(sel.tags.map(\.value)).isDisjoint(with: v.tags)) && !sel.exclude.contains { $0.value == v.name } }.map(\.name)
    }

    /// Differences between a user's object before and after, beyond what haven may change. xapi
    /// keeps relations itself: a VM's `snapshots`, `parent` (its newest snapshot) and a snapshot's
    /// `children` move when a protected VM is snapshotted; `physical_utilisation` follows the
    /// guest writes this test makes.
    static func differences(_ before: [String: XenValue], _ after: [String: XenValue], cbtAllowed: Bool, snapshotted: Bool = false) -> [String] {
        var always: Set<String> = ["snapshots", "allowed_operations", "current_operations", "children", "physical_utilisation"]
        if snapshotted { always.insert("parent") }
        var out: [String] = []
        for key in Set(before.keys).union(after.keys).sorted() where !always.contains(key) {
            var b = before[key]
            var a = after[key]
            if cbtAllowed {
                if key == "cbt_enabled" { continue }
                if key == "other_config" {
                    var bm = b?.structValue ?? [:]
                    var am = a?.structValue ?? [:]
                    if am[OwnershipMarks.cbt] == .string(instance) { am[OwnershipMarks.cbt] = nil }
                    if bm[OwnershipMarks.cbt] == .string(instance) { bm[OwnershipMarks.cbt] = nil }
                    b = .structure(bm)
                    a = .structure(am)
                }
            }
            if a != b { out.append("\(key): \(String(describing: b)) -> \(String(describing: a))") }
        }
        return out
    }

    final class World: @unchecked Sendable {
        // @unchecked: set up in init, then used by one test task.
        let simulator: Simulator
        let dir: URL
        let prefix: String
        let caFile: String

        init(_ text: (String) -> String) throws {
            let n = EngineHarness.counter.add(1, ordering: .relaxed).newValue
            prefix = "127.\(20 + Int(getpid()) % 20).\(n)"
            dir = FileManager.default.temporaryDirectory.appendingPathComponent("haven-property-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: dir.appendingPathComponent("state"), withIntermediateDirectories: true)
            try text(prefix).write(to: dir.appendingPathComponent("world.yaml"), atomically: true, encoding: .utf8)
            simulator = Simulator(world: try HavenSim.World.load(path: dir.appendingPathComponent("world.yaml").path),
                                  stateDirectory: dir.appendingPathComponent("sim"))
            caFile = try simulator.start()[0].caFile
            try "property-pw\n".write(to: dir.appendingPathComponent("password"), atomically: true, encoding: .utf8)
            // The instance id haven will use, known in advance so the world can forge it.
            try instance.write(to: dir.appendingPathComponent("state/instance-id"), atomically: true, encoding: .utf8)
        }

        deinit {
            simulator.stop()
            try? FileManager.default.removeItem(at: dir)
        }

        func control(_ command: [String: XenValue]) throws {
            _ = try Simulator.control(stateDirectory: dir.appendingPathComponent("sim"), pool: nil, command)
        }

        func client() -> XenAPIClient {
            XenAPIClient(url: "https://\(prefix).1:4443", credentials: XenCredentials(username: "root", password: "property-pw"), tls: .caFile(caFile))
        }
    }

    static let totals = Totals()
    final class Totals: @unchecked Sendable {
        // @unchecked: guarded by `lock`.
        let lock = NSLock()
        var seeds = 0, objects = 0, reconciles = 0, faults = 0, cancels = 0, actions = 0
        func add(objects o: Int, reconciles r: Int, faults f: Int, cancels c: Int, actions a: Int) -> String {
            lock.withLock {
                seeds += 1
                objects += o
                reconciles += r
                faults += f
                cancels += c
                actions += a
                return "\(seeds) seeds, \(objects) user objects compared, \(reconciles) reconciles (\(actions) actions, \(faults) under faults, \(cancels) cancelled)"
            }
        }
    }

    @Test(arguments: seeds)
    func havenChangesNothingItDoesNotOwn(seed: UInt64) async throws {
        var rng = Rng(state: seed)
        let vms = Self.randomVMs(&rng)
        let world = try World { Self.world(vms, prefix: $0, seed: seed) }
        let c = world.client()
        defer { Task { await c.logout() } }

        // The user's own objects beside the world's: snapshots named like haven's (some with
        // forged marks), a loose disk marked like a CBT anchor of this instance, CBT switched on.
        let pool = try await c.records(VMRecord.self).filter { $0.value.isRealVM }
        for (ref, vm) in pool.sorted(by: { $0.value.nameLabel < $1.value.nameLabel }) where rng.chance(0.5) {
            let name = rng.chance(0.5) ? "haven p0 \(vm.nameLabel) 2026-01-01T00:00:00Z" : "before upgrade"
            let snap = try await c.snapshot(ref, name: name)
            if rng.chance(0.5) {
                for (k, v) in [(OwnershipMarks.owner, Self.instance), (OwnershipMarks.role, "backup-snapshot"), (OwnershipMarks.policy, "p0")] {
                    try await c.setOtherConfig(snap, key: k, value: v)
                }
            }
        }
        let srs = try await c.records(SRRecord.self)
        let local = srs.first { $0.value.nameLabel == "Local storage" }!.key
        _ = try await c.createVDI([
            "name_label": "scratch", "name_description": "", "SR": local.value, "virtual_size": .int(1 << 20), "type": "user", "sharable": false,
            "read_only": false, "other_config": [OwnershipMarks.owner: .string(Self.instance), OwnershipMarks.role: "cbt-anchor"],
        ])
        var userCBT: Set<String> = []
        for (ref, vdi) in try await c.records(VDIRecord.self) where !vdi.isASnapshot && rng.chance(0.25) {
            try await c.enableCBT(ref)
            userCBT.insert(vdi.uuid)
        }
        let before = try await Self.objects(c)

        // Several reconciles, each with a random configuration, guest writes before it, and maybe
        // a fault during it or a cancellation (a kill) part-way.
        var now = Date(timeIntervalSince1970: 1_780_000_000)
        var protected: Set<String> = []
        var reconciles = 0, faults = 0, cancels = 0, actions = 0
        let rounds = Int.random(in: 3...4, using: &rng)
        for round in 0..<rounds {
            let last = round == rounds - 1
            let text = Self.randomSpec(&rng, vms: vms, prefix: world.prefix, dir: world.dir, caFile: world.caFile)
            let loaded = SpecLoader.load(sources: [.init(path: world.dir.path + "/haven.yaml", text: text)])
            let desired = try #require(loaded.state, "seed \(seed) round \(round): the generated configuration is invalid: \(loaded.diagnostics)")
            for p in desired.backupPolicies { protected.formUnion(Self.selected(p.spec.vms, vms)) }
            for r in desired.replicationPolicies { protected.formUnion(Self.selected(r.spec.vms, vms)) }
            for vm in vms where rng.chance(0.5) {
                try world.control(["command": "write", "vm": .string(vm.name), "percent": 5, "seed": .int(Int64(round))])
            }
            var fault: String?
            if !last && rng.chance(0.35) {
                fault = ["error:*:INTERNAL_ERROR@p=0.1", "error:VDI.data_destroy:VDI_IN_USE@count=3", "nbd-drop:200000", "error:VM.destroy:HANDLE_INVALID@count=1",
                         "sr-full:Replica storage"].randomElement(using: &rng)!
                try world.control(["command": "fault", "rule": .string(fault!)])
                faults += 1
            }
            now += 3_700
            let at = now
            let engine = try Engine(desired: desired, state: StateDirectory(path: world.dir.appendingPathComponent("state").path))
            let task = Task {
                try await engine.reconcile(ReconcileRequest(scope: TargetScope(pools: ["lab"], policies: nil), now: { at }), events: { _ in },
                                           approve: { _ in true })
            }
            if !last && fault == nil && rng.chance(0.25) {
                try await Task.sleep(for: .milliseconds(Int.random(in: 50...1_500, using: &rng)))
                task.cancel()
                cancels += 1
            }
            let report = try await task.value
            actions += report.plan.actions.count
            reconciles += 1
            if fault != nil { try world.control(["command": "fault-clear"]) }
            if last {
                #expect(report.result.ok, "seed \(seed): the last reconcile (no fault, no cancel) succeeds: \(report.result.failed.map { "\($0.0.headline): \($0.1)" })")
            }
        }

        // Every object that was there before haven came is as it was.
        let after = try await Self.objects(c)
        var problems: [String] = []
        for (uuid, b) in before.vms {
            guard let a = after.vms[uuid] else { problems.append("VM \(b["name_label"]?.stringValue ?? uuid) is gone"); continue }
            let name = b["name_label"]?.stringValue ?? uuid
            let snapshotted = b["is_a_snapshot"]?.boolValue == false && protected.contains(name)
            problems += Self.differences(b, a, cbtAllowed: false, snapshotted: snapshotted).map { "VM \(name): \($0)" }
        }
        for (uuid, b) in before.vdis {
            guard let a = after.vdis[uuid] else { problems.append("VDI \(b["name_label"]?.stringValue ?? uuid) is gone"); continue }
            // CBT may change on a protected VM's disk, only with haven's mark, never on one the user switched on.
            let mayCBT = protected.contains(before.diskOf[uuid] ?? "") && !userCBT.contains(uuid)
            problems += Self.differences(b, a, cbtAllowed: mayCBT).map { "VDI \(b["name_label"]?.stringValue ?? uuid): \($0)" }
            if a["cbt_enabled"]?.boolValue != b["cbt_enabled"]?.boolValue, a["other_config"]?.structValue?[OwnershipMarks.cbt] != .string(Self.instance) {
                problems.append("VDI \(b["name_label"]?.stringValue ?? uuid): CBT changed without haven's mark")
            }
        }
        for (uuid, b) in before.vbds {
            guard let a = after.vbds[uuid] else { problems.append("VBD \(uuid) is gone"); continue }
            problems += Self.differences(b, a, cbtAllowed: false).map { "VBD \(uuid): \($0)" }
        }
        #expect(problems.isEmpty, "seed \(seed): \(problems.joined(separator: "\n"))")
        let line = Self.totals.add(objects: before.vms.count + before.vdis.count + before.vbds.count, reconciles: reconciles, faults: faults,
                                   cancels: cancels, actions: actions)
        print("ownership property: \(line)")
    }
}
