import Foundation
import Testing

/// Issue 13, defect 6: hooks never see haven's environment (it holds the pool password).
@Suite struct HookEnvironmentTests {
    @Test func hooksGetAMinimalEnvironment() throws {
        let vms = """
                  - name: web
                    disks: [{name: web-root, size: 2Mi, fill: {seed: 3}}]
            """
        let policy = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec:
              pool: lab
              vms: {names: [web]}
              repository: local
              hooks: {preSnapshot: {command: [/usr/bin/env]}}
            """
        let s = try Scenario(vms: vms, policy: policy)
        let run = try s.haven(["apply", "-f", s.config, "--auto-approve"], env: ["SOME_OTHER_SECRET": "hunter2-other"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let all = run.stdout + run.stderr
        #expect(all.contains("preSnapshot: HAVEN_VM=web"), "the hook's output is logged: \(all)")
        #expect(all.contains("preSnapshot: HAVEN_POLICY=daily"))
        #expect(all.contains("preSnapshot: PATH="))
        #expect(!all.contains(s.password), "the pool password never reaches a hook")
        #expect(!all.contains("SCENARIO_PASSWORD"))
        #expect(!all.contains("hunter2-other"))
    }
}
