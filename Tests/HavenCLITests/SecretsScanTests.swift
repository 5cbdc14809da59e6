import Foundation
import Testing

/// The quick secrets scan (`make reliability` runs a longer one): a backup flow with a pool
/// password, an encrypted repository's key and a token in haven's environment, then every output,
/// the saved plan, every file of the state directory and of the repository, and what a hook saw,
/// searched for each secret as text, hex and base64. Secrets never leave where they are kept.
@Suite struct SecretsScanTests {
    @Test func noSecretInAnyOutputLogPlanCatalogRepositoryOrHookEnvironment() throws {
        let vms = """
                  - name: web
                    power: Running
                    disks: [{name: web-root, size: 2Mi, fill: {seed: 41}}]
            """
        let s0 = try Scenario(vms: vms, policy: "")
        let files = s0.dir.appendingPathComponent("files")
        try FileManager.default.createDirectory(at: files, withIntermediateDirectories: true)
        let hookOut = files.appendingPathComponent("hook-env.txt").path
        let hook = files.appendingPathComponent("hook.sh").path
        try "#!/bin/sh\nenv >> \(hookOut)\n".write(toFile: hook, atomically: true, encoding: .utf8)
        chmod(hook, 0o700)
        let keyHex = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        let keyFile = files.appendingPathComponent("repo.key").path
        try (keyHex + "\n").write(toFile: keyFile, atomically: true, encoding: .utf8)
        chmod(keyFile, 0o600)
        let token = "token-\(UUID().uuidString)"
        // The scenario's configuration, with an encrypted repository and a policy with hooks.
        let configFile = s0.config + "/haven.yaml"
        var config = try String(contentsOfFile: configFile, encoding: .utf8)
        config = config.replacingOccurrences(of: "spec: {path: \(s0.repository)}", with: "spec: {path: \(s0.repository), encryption: {keyFile: \(keyFile)}}")
        config += """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec:
              pool: lab
              vms: {names: [web]}
              repository: local
              hooks:
                preSnapshot: {command: [\(hook)]}
                postSnapshot: {command: [\(hook)]}

            """
        try config.write(toFile: configFile, atomically: true, encoding: .utf8)

        var outputs: [String] = []
        func haven(_ args: [String], _ ok: Set<Int32> = [0]) throws {
            let r = try s0.haven(args, env: ["HAVEN_LOG_LEVEL": "trace", "SECRETS_TEST_TOKEN": token])
            outputs.append(r.stdout + r.stderr)
            #expect(ok.contains(r.status), "haven \(args.joined(separator: " ")): \(r.stdout)\(r.stderr)")
        }
        let plan = files.appendingPathComponent("plan.json").path
        try haven(["repo", "init", s0.repository, "--encrypt", "--key-file", keyFile])
        try haven(["diff", "-f", s0.config, "--output", "json"], [1])
        try haven(["diff", "-f", s0.config, "--out", plan], [1])
        try haven(["apply", "-f", s0.config, "--auto-approve", plan])
        try haven(["status", "-f", s0.config, "--output", "json"])
        try haven(["history", "-f", s0.config, "--output", "json"])
        try haven(["backups", "list", "-f", s0.config, "--output", "json"])
        try haven(["repo", "verify", "-f", s0.config])
        // A refused login says so without repeating the password it was given.
        let wrong = try s0.haven(["diff", "-f", s0.config], env: ["SCENARIO_PASSWORD": s0.password + "-typo"])
        #expect(wrong.status == 2)
        outputs.append(wrong.stdout + wrong.stderr)

        var places: [(String, Data)] = outputs.enumerated().map { ("output \($0.offset)", Data($0.element.utf8)) }
        for root in [s0.dir.appendingPathComponent("state").path, s0.repository, plan] {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: root, isDirectory: &isDir) else { continue }
            let paths = isDir.boolValue ? (FileManager.default.enumerator(atPath: root)?.allObjects as? [String] ?? []).map { root + "/" + $0 } : [root]
            for p in paths { if let d = FileManager.default.contents(atPath: p) { places.append((p, d)) } }
        }
        let hookEnv = FileManager.default.contents(atPath: hookOut) ?? Data()
        #expect(!hookEnv.isEmpty, "the hooks ran")
        places.append(("the hooks' environment", hookEnv))
        #expect(places.count > 15)

        let keyBytes = Data(stride(from: 0, to: 64, by: 2).map { UInt8(keyHex.dropFirst($0).prefix(2), radix: 16)! })
        let secrets: [(String, Data)] = [
            ("pool password", Data(s0.password.utf8)), ("pool password (base64 of user:password)", Data("root:\(s0.password)".utf8).base64EncodedData()),
            ("token", Data(token.utf8)), ("key (hex)", Data(keyHex.utf8)), ("key (HEX)", Data(keyHex.uppercased().utf8)), ("key (bytes)", keyBytes),
            ("key (base64)", keyBytes.base64EncodedData()),
        ]
        for (what, secret) in secrets {
            for (where_, data) in places {
                #expect(data.range(of: secret) == nil, "the \(what) is in \(where_)")
            }
        }
    }
}
