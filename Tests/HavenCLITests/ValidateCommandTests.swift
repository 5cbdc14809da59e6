import Foundation
import Testing

@Suite struct ValidateCommandTests {
    @Test func validExampleExitsZeroWithSummary() throws {
        let run = try HavenBinary.run(["validate", "examples/quickstart"])
        #expect(run.status == 0)
        #expect(run.stdout.hasPrefix("examples/quickstart: valid, 3 resources in 3 files"))
        #expect(run.stdout.contains("daily"))
        #expect(run.stderr.isEmpty)
    }

    @Test func invalidConfigExitsTwoWithCompilerStyleErrors() throws {
        let run = try HavenBinary.run(["validate", "five-defects.yaml"], in: HavenBinary.packageRoot.appendingPathComponent("Tests/HavenSpecTests/Fixtures/invalid"))
        #expect(run.status == 2)
        #expect(run.stdout.isEmpty)
        let lines = run.stderr.split(separator: "\n").map(String.init)
        #expect(lines.filter { $0.contains(": error: ") }.count == 5)
        #expect(lines.first == "five-defects.yaml:8:5: error: 'spec.credentials.password' is refused: secrets must not be written in YAML; use 'passwordEnv' or 'passwordFile' instead")
        #expect(lines.last == "five-defects.yaml: 5 errors; nothing was applied")
    }

    @Test func jsonOutputCarriesErrors() throws {
        let run = try HavenBinary.run(["validate", "--output", "json", "Tests/HavenSpecTests/Fixtures/invalid/unknown-key.yaml"])
        #expect(run.status == 2)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        #expect(object["valid"] as? Bool == false)
        #expect(object["formatVersion"] as? Int == 1)
        let errors = try #require(object["errors"] as? [[String: Any]])
        #expect(errors.count == 1)
        #expect(errors.first?["code"] as? String == "unknown-key")
        #expect(errors.first?["line"] as? Int == 18)
        #expect(errors.first?["column"] as? Int == 3)
    }

    @Test func jsonOutputCarriesTheNormalizedState() throws {
        let run = try HavenBinary.run(["validate", "examples/production", "--output", "json"])
        #expect(run.status == 0)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        #expect(object["valid"] as? Bool == true)
        let state = try #require(object["state"] as? [String: Any])
        let policies = try #require(state["backupPolicies"] as? [[String: Any]])
        let general = try #require(policies.first { ($0["metadata"] as? [String: Any])?["name"] as? String == "general" })
        let spec = try #require(general["spec"] as? [String: Any])
        #expect(spec["quiesce"] as? String == "off", "defaults are filled in")
        #expect((spec["schedule"] as? [String: Any])?["every"] as? String == "6h")
    }

    @Test func missingDirectoryIsAnError() throws {
        let run = try HavenBinary.run(["validate", "does-not-exist"])
        #expect(run.status == 2)
        #expect(run.stderr.hasPrefix("does-not-exist:1:1: error: no such file or directory"))
    }

    @Test func argumentErrorsKeepTheParsersCode() throws {
        let run = try HavenBinary.run(["validate", "--output", "yaml"])
        #expect(run.status == 64)
        let unknown = try HavenBinary.run(["frobnicate"])
        #expect(unknown.status == 64)
    }

    @Test func helpReadsWell() throws {
        let top = try HavenBinary.run(["--help"])
        #expect(top.status == 0)
        #expect(top.stdout.contains("validate"))
        #expect(top.stdout.contains("Exit codes"))
        let sub = try HavenBinary.run(["help", "validate"])
        #expect(sub.status == 0)
        #expect(sub.stdout.contains("FILE:LINE:COL: error: MESSAGE"))
    }

    @Test func schemaCommandPrintsTheShippedSchema() throws {
        let run = try HavenBinary.run(["schema"])
        #expect(run.status == 0)
        let shipped = try String(contentsOf: HavenBinary.packageRoot.appendingPathComponent("manifests/haven.schema.json"), encoding: .utf8)
        #expect(run.stdout == shipped)
    }
}
