import Foundation
import Testing
import XenAPI

/// Day-2 operations (issue 12), each through the binary against `haven sim`.
@Suite struct DayTwoTests {
    static let twoVMs = """
              - name: web
                power: Running
                disks: [{name: web-root, size: 4Mi, fill: {seed: 1}}]
              - name: db
                disks: [{name: db-root, size: 4Mi, fill: {seed: 3}}]
        """

    static let policy = """
        apiVersion: haven/v1
        kind: BackupPolicy
        metadata: {name: daily}
        spec:
          pool: lab
          vms: {names: [web, db]}
          schedule: {every: 24h}
          cbt: true
          repository: local
        """

    func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "not JSON: \(text)")
    }

    func webDisk(_ s: Scenario) async throws -> String {
        let c = s.client()
        let (ref, _) = try await c.vmNamed("web")
        let uuid = try await c.record(try await c.diskVDIs(ref)[0]).uuid
        await c.logout()
        return s.diskFile(uuid)
    }

    /// `backup now`: out of schedule, one VM or the policy, incremental or --full; every run in the history.
    @Test func backupNowRunsOutOfScheduleAndIsRecorded() throws {
        let s = try Scenario(vms: Self.twoVMs, policy: Self.policy)
        #expect(try s.apply().status == 0)
        #expect(try s.diff().status == 0, "in sync: nothing is due")
        #expect(try s.backups().count == 2)

        s.now = s.now.addingTimeInterval(60)
        var run = try s.haven(["backup", "now", "daily", "--vm", "web", "-f", s.config])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("asked now (`haven backup now`)"), "\(run.stdout)")
        #expect(run.stdout.contains("incremental backup"), "an anchor exists: incremental")
        #expect(!run.stdout.contains("VM db"), "only web: \(run.stdout)")
        var list = try s.backups()
        #expect(list.count == 3)
        #expect(list.last?["kind"] as? String == "incremental")

        s.now = s.now.addingTimeInterval(60)
        run = try s.haven(["backup", "now", "daily", "--vm", "web", "--full", "-f", s.config])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("full, because --full was asked"), "\(run.stdout)")
        list = try s.backups()
        #expect(list.count == 4)
        #expect(list.last?["kind"] as? String == "full")

        // The whole policy, due or not.
        s.now = s.now.addingTimeInterval(60)
        run = try s.haven(["backup", "now", "daily", "-f", s.config])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(try s.backups().count == 6)

        // Mistakes: a policy that is not declared, a VM no policy selects, no target at all.
        run = try s.haven(["backup", "now", "dayly", "-f", s.config])
        #expect(run.status == 2)
        #expect(run.stderr.contains("did you mean 'daily'"), "\(run.stderr)")
        run = try s.haven(["backup", "now", "--vm", "ghost", "-f", s.config])
        #expect(run.status == 2)
        #expect(run.stderr.contains("nothing was backed up for VM ghost"), "\(run.stderr)")
        #expect(try s.haven(["backup", "now", "-f", s.config]).status == 64)
        #expect(try s.backups().count == 6)

        // History: apply, three backup-now runs and the one that found nothing.
        let history = try json(try s.haven(["history", "--output", "json"]).stdout)
        let runs = try #require(history["runs"] as? [[String: Any]])
        #expect(runs.count == 5, "\(runs)")
        #expect(runs.last?["command"] as? String == "apply -f \(s.config) --auto-approve")
        #expect(runs.last?["result"] as? String == "succeeded")
        #expect(runs.last?["succeeded"] as? Int == 4, "two CBT switches, two backups")
        #expect(runs.first?["result"] as? String == "error", "the run that found nothing to back up")
        let webOnly = try #require(try json(try s.haven(["history", "--vm", "web", "--output", "json"]).stdout)["runs"] as? [[String: Any]])
        let dbOnly = try #require(try json(try s.haven(["history", "--vm", "db", "--output", "json"]).stdout)["runs"] as? [[String: Any]])
        #expect(webOnly.count == 4)
        #expect(dbOnly.count == 2, "the apply and the policy-wide backup now")
        #expect(try #require(try json(try s.haven(["history", "--since", "2999-01-01", "--output", "json"]).stdout)["runs"] as? [[String: Any]]).isEmpty)
        let fullRun = try #require(runs.first { ($0["command"] as? String)?.contains("--full") == true }?["id"] as? Int)
        let show = try s.haven(["history", "show", String(fullRun)])
        #expect(show.status == 0)
        #expect(show.stdout.contains("✔ succeeded backup VM web (daily)"), "\(show.stdout)")
        #expect(show.stdout.contains("backup \(list[3]["id"] as! String)"), "\(show.stdout)")
        #expect(try s.haven(["history", "show", "999"]).status == 2)
        let text = try s.haven(["history"]).stdout
        #expect(text.contains("backup now daily --vm web --full"))

        // Status: the last attempt comes from the history; suspended is a field of its own.
        let status = try json(try s.haven(["status", "-f", s.config, "--output", "json"]).stdout)
        #expect(status["formatVersion"] as? Int == 2)
        let rows = try #require(status["vms"] as? [[String: Any]])
        let web = try #require(rows.first { $0["vm"] as? String == "web" })
        #expect(web["policy"] as? String == "daily")
        #expect(web["suspended"] as? Bool == false)
        #expect((web["lastAttempt"] as? [String: Any])?["result"] as? String == "succeeded")
        #expect(web["rpoMet"] as? Bool == true)
    }

    /// `restore --backup latest` and `--at`; `--to-file` never overwrites without --force; list filters; show.
    @Test func restoreLatestOrAtATime() async throws {
        let s = try Scenario(vms: Self.twoVMs, policy: Self.policy)
        let t0 = s.now
        #expect(try s.apply().status == 0)
        let disk = try await webDisk(s)
        let first = try s.sha(disk)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "10", "--seed", "7"]).status == 0)
        let second = try s.sha(disk)
        #expect(first != second)
        s.now = t0.addingTimeInterval(25 * 3_600)
        #expect(try s.apply().status == 0)

        let latest = s.dir.appendingPathComponent("latest.raw").path
        var run = try s.haven(["restore", "-f", s.config, "--backup", "latest", "--vm", "web", "--disk", "0", "--to-file", latest])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(try s.sha(latest) == second)
        let iso = ISO8601DateFormatter()
        let older = s.dir.appendingPathComponent("older.raw").path
        run = try s.haven(["restore", "-f", s.config, "--at", iso.string(from: t0.addingTimeInterval(3_600)), "--vm", "web", "--policy", "daily",
                           "--disk", "0", "--to-file", older])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(try s.sha(older) == first)
        // Before the first backup: nothing to restore.
        run = try s.haven(["restore", "-f", s.config, "--at", iso.string(from: t0.addingTimeInterval(-3_600)), "--vm", "web", "--to-file", s.dir.path + "/none.raw"])
        #expect(run.status == 2)
        #expect(run.stderr.contains("the oldest is from"), "\(run.stderr)")
        #expect(try s.haven(["restore", "-f", s.config, "--backup", "latest", "--to-file", s.dir.path + "/x.raw"]).status == 64, "latest needs --vm")

        // An existing file is kept unless --force.
        run = try s.haven(["restore", "-f", s.config, "--backup", "latest", "--vm", "web", "--disk", "0", "--to-file", older])
        #expect(run.status == 2)
        #expect(run.stderr.contains("exists"), "\(run.stderr)")
        #expect(try s.sha(older) == first, "untouched")
        run = try s.haven(["restore", "-f", s.config, "--backup", "latest", "--vm", "web", "--disk", "0", "--to-file", older, "--force"])
        #expect(run.status == 0)
        #expect(try s.sha(older) == second)

        // Filters and the POLICY column.
        func listed(_ extra: [String]) throws -> [[String: Any]] {
            let out = try s.haven(["backups", "list", "-f", s.config, "--output", "json"] + extra).stdout
            return try #require(try json(out)["backups"] as? [[String: Any]])
        }
        #expect(try listed([]).count == 4)
        #expect(try listed(["--vm", "web"]).count == 2)
        #expect(try listed(["--vm", "web", "--since", iso.string(from: t0.addingTimeInterval(3_600))]).count == 1)
        #expect(try listed(["--policy", "daily", "--pool", "lab"]).count == 4)
        #expect(try listed(["--policy", "weekly"]).isEmpty)
        #expect(try listed(["--pool", "other"]).isEmpty)
        let text = try s.haven(["backups", "list", "-f", s.config, "--vm", "db"]).stdout
        #expect(text.contains("POLICY") && text.contains("daily"), "\(text)")

        let webVersions = try listed(["--vm", "web"])
        let id = try #require(webVersions.last?["id"] as? String)
        run = try s.haven(["backups", "show", id, "-f", s.config])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout.contains("kind      incremental"), "\(run.stdout)")
        #expect(run.stdout.contains("base      \(webVersions[0]["id"] as! String)"), "\(run.stdout)")
        #expect(run.stdout.contains("web-root"))
        #expect(run.stdout.contains("reason: due"), "the notes: \(run.stdout)")
        let shown = try json(try s.haven(["backups", "show", id, "-f", s.config, "--output", "json"]).stdout)
        #expect((shown["disks"] as? [[String: Any]])?.count == 1)
        #expect((shown["base"] as? [String: Any])?["id"] as? String == webVersions[0]["id"] as? String)
    }

    /// `backups forget`: asks (refuses without a terminal), --dry-run, and says what gc will free.
    @Test func forgetAsksAndSaysWhatGCWillFree() throws {
        let s = try Scenario(vms: Self.twoVMs, policy: Self.policy)
        #expect(try s.apply().status == 0)
        let id = try #require(try s.backups().first?["id"] as? String)

        var run = try s.haven(["backups", "forget", "-f", s.config, id])
        #expect(run.status == 2)
        #expect(run.stderr.contains("pass --yes"), "\(run.stderr)")
        #expect(try s.backups().count == 2)

        run = try s.haven(["backups", "forget", "-f", s.config, "--dry-run", id])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout.contains("Would forget 1 version"))
        #expect(run.stdout.contains("`haven repo gc` will then free up to"), "\(run.stdout)")
        #expect(!run.stdout.contains("up to 0 B"), "the two VMs share no data: \(run.stdout)")
        #expect(run.stdout.contains("Dry run: nothing was forgotten."))
        #expect(try s.backups().count == 2)

        #expect(try s.haven(["backups", "forget", "-f", s.config, "--yes", "no-such-version"]).status == 2)
        run = try s.haven(["backups", "forget", "-f", s.config, "--yes", id])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout.contains("forgot \(id)"))
        #expect(try s.backups().count == 1)
    }

    /// `plan show`, `validate -f`, did-you-mean for a mistyped command, JSON errors, `status --check`.
    @Test func plansCommandsErrorsAndChecks() throws {
        let s = try Scenario(vms: Self.twoVMs, policy: Self.policy)
        let planFile = s.dir.appendingPathComponent("plan.json").path
        #expect(try s.haven(["diff", "-f", s.config, "--out", planFile]).status == 1)
        var run = try s.haven(["plan", "show", planFile])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout.contains("Plan: 2 to add, 2 to change, 0 to destroy"), "\(run.stdout)")
        #expect(run.stdout.contains("VM web (daily)"))
        let shown = try json(try s.haven(["plan", "show", planFile, "--output", "json"]).stdout)
        #expect(shown["formatVersion"] as? Int == 3, "plan format 3: appliance actions")
        #expect((shown["actions"] as? [[String: Any]])?.count == 4)

        #expect(try s.haven(["validate", "-f", s.config]).status == 0)
        #expect(try s.haven(["validate", s.config]).status == 0)
        #expect(try s.haven(["validate", "-f", s.config, "elsewhere"]).status == 64)

        run = try s.haven(["aply", "-f", s.config])
        #expect(run.status == 64)
        #expect(run.stderr.contains("did you mean 'apply'"), "\(run.stderr)")
        run = try s.haven(["backups", "lst"])
        #expect(run.status == 64)
        #expect(run.stderr.contains("did you mean 'list'"), "\(run.stderr)")

        // With --output json a failure is JSON on standard output, and exit 2.
        run = try s.haven(["plan", "show", s.dir.path + "/missing.json", "--output", "json"])
        #expect(run.status == 2)
        let error = try #require(try json(run.stdout)["error"] as? [String: Any])
        #expect(error["code"] as? String == "io")
        #expect((error["message"] as? String)?.contains("missing.json") == true)
        run = try s.haven(["backups", "show", "nope", "-f", s.config, "--output", "json"])
        #expect(run.status == 2)
        #expect(try json(run.stdout)["formatVersion"] as? Int == 1)
        #expect(run.stderr.isEmpty, "nothing but JSON: \(run.stderr)")

        // status --check: 0 while every RPO is met, 3 once one is missed.
        #expect(try s.haven(["status", "-f", s.config, "--check"]).status == 3, "never backed up")
        #expect(try s.apply().status == 0)
        #expect(try s.haven(["status", "-f", s.config, "--check"]).status == 0)
        s.now = s.now.addingTimeInterval(2 * 86_400)
        #expect(try s.haven(["status", "-f", s.config, "--check"]).status == 3)
    }

    /// apply never makes a repository key; haven's own files are its user's only.
    @Test func applyNeverCreatesAKeyAndStateIsPrivate() throws {
        let s = try Scenario(vms: Self.twoVMs, policy: Self.policy)
        let key = s.dir.appendingPathComponent("repo.key").path
        let file = s.config + "/haven.yaml"
        let text = try String(contentsOfFile: file, encoding: .utf8)
        try text.replacingOccurrences(of: "spec: {path: \(s.repository)}", with: "spec: {path: \(s.repository), encryption: {keyFile: \(key)}}")
            .write(toFile: file, atomically: true, encoding: .utf8)
        var run = try s.diff()
        #expect(run.status == 2)
        #expect(run.stderr.contains("haven repo init --encrypt"), "\(run.stderr)")
        run = try s.apply()
        #expect(run.status == 2)
        #expect(!FileManager.default.fileExists(atPath: key), "no key was made")
        #expect(!FileManager.default.fileExists(atPath: s.repository + "/config.json"))

        #expect(try s.haven(["repo", "init", "--encrypt", "--key-file", key, s.repository]).status == 0)
        #expect(try s.diff().status == 1)
        #expect(try s.apply().status == 0)
        #expect(try s.backups().count == 2)

        func mode(_ path: String) throws -> Int {
            (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue ?? -1
        }
        let state = s.dir.appendingPathComponent("state").path
        #expect(try mode(state) == 0o700)
        #expect(try mode(state + "/locks") == 0o700)
        #expect(try mode(state + "/catalog.sqlite") == 0o600)
        #expect(try mode(state + "/instance-id") == 0o600)
        #expect(try mode(state + "/locks/lab.lock") == 0o600)
    }
}
