import Foundation
import HavenSpec
import Testing

@testable import HavenCore

/// The plan as a typed, self-contained action graph, and the engine-core defects the planner owns.
@Suite struct PlanGraphTests {
    @Test func theFingerprintCoversTheConfiguration() {
        var w = World()
        w.vm("web", disks: ["root"])
        w.vm("db", disks: ["root"])
        let base = w.plan(w.desired()).fingerprint
        #expect(base == w.plan(w.desired()).fingerprint, "same inputs, same fingerprint")
        // A VM removed from the selector: a saved plan must be refused.
        let fewer = w.desired(replace: [("names: [web, db]", "names: [web]")])
        #expect(w.plan(fewer).fingerprint != base)
        // The repository moved: a plan made for one repository must not write to another.
        let moved = w.desired(replace: [("path: /srv/haven", "path: /srv/other")])
        #expect(w.plan(moved).fingerprint != base)
        // Hook, NBD and limit settings are desired state too.
        #expect(w.plan(w.desired("  hooks: {preSnapshot: {command: [/bin/true]}}")).fingerprint != base)
        // Where a document was written is not: the same YAML with blank lines plans the same.
        #expect(w.plan(w.desired("", extra: "\n\n")).fingerprint == base)
    }

    @Test func aPlanCarriesWhatItsActionsNeed() throws {
        var w = World()
        w.vm("web", disks: ["root"])
        let p = w.plan(w.desired("  hooks: {preSnapshot: {command: [/bin/echo, hi], timeout: 30s}}"))
        let b = try #require(p.actions.first { $0.kind == .backup }?.job)
        #expect(b.repository == RepositoryTarget(name: "local", path: "/srv/haven", chunkSize: 65_536, compression: "zstd:3", keyFile: nil))
        #expect(b.preSnapshot == HookJob(command: ["/bin/echo", "hi"], timeoutSeconds: 30, failOnError: true))
        #expect(p.pools["lab"] == PoolSettings(snapshots: 2, transfers: 4, nbdConnections: 4, nbdRequired: false, nbdNetwork: nil, nbdTLS: true))
        // And survives a round trip through the saved-plan format.
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        let back = try d.decode(Plan.self, from: e.encode(p))
        #expect(back.actions == p.actions)
        #expect(back.pools == p.pools)
        #expect(back.fingerprint == p.fingerprint)
    }

    @Test func dependenciesAreExplicit() throws {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        for i in 0..<5 { w.backedUp("web", hoursAgo: Double(i) * 24 + 25, anchors: i == 0, id: "v\(i)") }
        let p = w.plan(w.desired("  retention: {keepLast: 2}"))
        let backup = try #require(p.actions.first { $0.kind == .backup })
        let retire = try #require(p.actions.first { $0.kind == .retireAnchor })
        #expect(retire.requires == [backup.key], "the old anchor goes only once the new backup succeeded")
        let prunes = p.actions.filter { $0.kind == .prune }
        #expect(prunes.count == 4)
        #expect(prunes.allSatisfy { $0.requires == [backup.key] }, "no version is pruned when the backup that replaces it fails")
        let gc = try #require(p.actions.first { $0.kind == .gc })
        #expect(Set(gc.after) == Set(prunes.map(\.key) + [backup.key]), "GC waits for the prunes and for every backup into the repository")
        // Every dependency names an action of the plan.
        let keys = Set(p.actions.map(\.key))
        #expect(p.actions.allSatisfy { a in a.requires.allSatisfy(keys.contains) && a.after.allSatisfy(keys.contains) })
    }

    @Test func turningCBTOffRetiresTheAnchorsAndDisablesCBT() {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        w.backedUp("web", hoursAgo: 2)
        w.pool.vdis["web-vdi-0"]!.otherConfig["haven.cbt"] = w.instance
        w.catalog.cbtMarks.append(CBTMark(pool: "lab", vdiUUID: "web-vdi-0", policy: "daily"))
        let p = w.plan(w.desired("  cbt: false"))
        let retire = p.actions.filter { $0.kind == .retireAnchor }
        #expect(retire.map(\.key.subject) == ["web-vdi-0-anchor"], "not due, but the anchors are planned away: \(p.actions.map(\.headline))")
        let disable = p.actions.filter { $0.kind == .disableCBT }
        #expect(disable.map(\.key.subject) == ["web-vdi-0"])
        #expect(disable.first?.after == retire.map(\.key))
        #expect(!p.isEmpty, "diff does not say 'No changes' while haven's anchors linger")
    }

    @Test func aBackupWithoutCBTKeepsADeltaBaseNotACBTAnchor() throws {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        w.backedUp("web", hoursAgo: 30)
        // cbt: false falls back to VHD deltas: the backup keeps its snapshot as the next delta base,
        // and the CBT anchors go once it succeeded.
        var p = w.plan(w.desired("  cbt: false"))
        var b = try #require(p.actions.first { $0.kind == .backup })
        #expect(b.job?.keepAnchors == true)
        #expect(b.job?.deltaBases == true)
        #expect(p.actions.contains { $0.kind == .retireAnchor && $0.requires == [b.key] })
        // With snapshotRetention 0 nothing can be kept: no anchor of either kind.
        p = w.plan(w.desired("  cbt: false\n  snapshotRetention: 0"))
        b = try #require(p.actions.first { $0.kind == .backup })
        #expect(b.job?.keepAnchors == false)
        #expect(b.job?.deltaBases == nil)
        #expect(p.actions.contains { $0.kind == .retireAnchor && $0.requires == [b.key] })
    }

    @Test func selectorsThatMatchNothingAreWarnings() {
        var w = World()
        w.vm("web", disks: ["root"])
        w.vm("db", disks: ["root"])
        let d = w.desired(replace: [("vms: {names: [web, db]}", "vms: {names: [web, db, buld], tags: [nightly], exclude: [ghost]}")])
        let p = w.plan(d)
        let texts = p.warnings.filter { $0.code == .noMatch }.map(\.message)
        #expect(texts.count == 3, "\(texts)")
        #expect(texts.contains { $0.contains("no VM named 'buld'") && $0.contains("t.yaml:") })
        #expect(texts.contains { $0.contains("tag 'nightly'") && $0.contains("t.yaml:") }, "a tag says where it is written: \(texts)")
        #expect(texts.contains { $0.contains("'ghost'") && $0.contains("t.yaml:") })
    }

    @Test func anUnreachablePoolIsReportedAndTheOthersArePlanned() {
        var w = World()
        w.vm("web", disks: ["root"])
        let p = Planner(instance: w.instance).plan(desired: w.desired(), observed: ["lab": w.pool], unreachable: ["branch": "curl error 7"],
                                                   catalog: w.catalog, now: w.now)
        #expect(p.warnings.contains { $0.code == .poolUnreachable && $0.pool == "branch" && $0.message.contains("curl error 7") })
        #expect(p.actions.contains { $0.kind == .backup && $0.pool == "lab" })
        #expect(p.scope.pools == ["branch", "lab"])
    }
}

