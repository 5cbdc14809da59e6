import Foundation
import HavenSpec
import Testing

/// manifests/haven.schema.json and docs/spec.md are generated from the validator's own field
/// list; these tests keep them from drifting apart, and let Python's jsonschema referee the examples.
@Suite struct SchemaTests {
    static let schemaFile = Paths.packageRoot.appendingPathComponent("manifests/haven.schema.json")

    @Test func committedSchemaIsTheGeneratedOne() {
        #expect(Paths.read(Self.schemaFile) == SpecSchema.jsonSchemaText(), "run: haven schema > manifests/haven.schema.json")
    }

    @Test func committedReferenceIsTheGeneratedOne() {
        let file = Paths.packageRoot.appendingPathComponent("docs/spec.md")
        #expect(Paths.read(file) == SpecSchema.markdownReference(), "run: haven schema --format markdown > docs/spec.md")
    }

    /// Walks the committed JSON file (not the generator) so a hand edit that adds or drops a field fails.
    @Test(arguments: ResourceKind.allCases)
    func schemaAndModelListTheSameFields(kind: ResourceKind) throws {
        let data = try Data(contentsOf: Self.schemaFile)
        let root = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let definitions = try #require(root["definitions"] as? [String: Any])
        let spec = try #require(definitions["\(kind.rawValue)Spec"] as? [String: Any])
        var paths: [String] = []
        func walk(_ object: [String: Any], _ prefix: String) {
            guard let props = object["properties"] as? [String: Any] else { return }
            for (name, value) in props {
                paths.append("\(prefix).\(name)")
                if let child = value as? [String: Any], child["type"] as? String == "object" { walk(child, "\(prefix).\(name)") }
            }
        }
        walk(spec, "spec")
        #expect(paths.sorted() == SpecSchema.fieldPaths(of: kind))
    }

    @Test func examplesPassTheJSONSchemaRefereeToo() throws {
        let script = """
            import glob, json, sys, yaml, jsonschema
            schema = json.load(open(sys.argv[1]))
            jsonschema.Draft7Validator.check_schema(schema)
            v = jsonschema.Draft7Validator(schema)
            bad = 0
            files = sys.argv[2:]
            for f in files:
                for doc in yaml.safe_load_all(open(f)):
                    for e in v.iter_errors(doc):
                        bad += 1
                        print(f, e.message)
            print(len(files), 'files')
            sys.exit(1 if bad or not files else 0)
            """
        // The same files haven reads (hidden and .havenignore'd ones, like a simulator world, are not config).
        let files = ["quickstart", "production"].flatMap { SpecLoader.load(path: Paths.examples.appendingPathComponent($0).path).files }
        #expect(files.count >= 8)
        let (status, output) = try runPython(script, [Self.schemaFile.path] + files)
        #expect(status == 0, "\(output)")
    }

    @Test(arguments: ["unknown-key.yaml", "wrong-type-int.yaml", "every-and-cron.yaml", "invalid-enum.yaml", "tls-exclusive.yaml",
                      "missing-repository.yaml", "inline-password.yaml"])
    func schemaRejectsWhatTheValidatorRejects(fixture: String) throws {
        let script = """
            import json, sys, yaml, jsonschema
            v = jsonschema.Draft7Validator(json.load(open(sys.argv[1])))
            n = sum(len(list(v.iter_errors(d))) for d in yaml.safe_load_all(open(sys.argv[2])) if d is not None)
            sys.exit(0 if n > 0 else 1)
            """
        let (status, output) = try runPython(script, [Self.schemaFile.path, Paths.invalidFixtures.appendingPathComponent(fixture).path])
        #expect(status == 0, "the schema accepted \(fixture): \(output)")
    }

    private func runPython(_ script: String, _ args: [String]) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script] + args
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}

@Suite struct ExampleTests {
    @Test(arguments: ["quickstart", "production"])
    func exampleIsValidWithoutWarnings(name: String) throws {
        let result = SpecLoader.load(path: Paths.examples.appendingPathComponent(name).path)
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics)")
        #expect(result.state != nil)
    }

    @Test func productionDeclaresWhatItsReadmeSays() throws {
        let state = try #require(SpecLoader.load(path: Paths.examples.appendingPathComponent("production").path).state)
        #expect(state.pools.count == 2)
        #expect(state.replicationPolicies.first?.spec.direction == .pull)
        #expect(state.appliancePools.allSatisfy { !$0.spec.addresses.isEmpty })
        #expect(state.backupPolicies.contains { $0.spec.retention.monthly > 0 && $0.spec.hooks.preSnapshot != nil })
    }
}
