import Foundation
import HavenSpec
import Testing

/// Each fixture under Fixtures/invalid has exactly the diagnostics listed for it in expected.txt,
/// at the exact place, with the exact words.
@Suite struct InvalidFixtureTests {
    static let expected: [String: [String]] = {
        var out: [String: [String]] = [:]
        for line in Paths.read(Paths.invalidFixtures.appendingPathComponent("expected.txt")).split(separator: "\n") {
            let file = String(line.prefix { $0 != ":" })
            out[file, default: []].append(String(line))
        }
        return out
    }()

    @Test func thereAreAtLeastFortySingleDefectFixtures() {
        let single = Paths.invalidFixtureNames().filter { Self.expected[$0]?.count == 1 }
        #expect(single.count >= 40)
    }

    @Test(arguments: Paths.invalidFixtureNames())
    func fixtureYieldsExactlyItsExpectedDiagnostics(name: String) throws {
        let text = Paths.read(Paths.invalidFixtures.appendingPathComponent(name))
        let result = SpecLoader.load(sources: [.init(path: name, text: text)])
        let expected = try #require(Self.expected[name], "no expectation for \(name) in expected.txt")
        #expect(result.diagnostics.map(\.description) == expected)
        #expect(result.state == nil, "an invalid configuration must not produce a desired state")
    }

    @Test func fiveDefectsAreAllReportedAtOnce() {
        let name = "five-defects.yaml"
        let result = SpecLoader.load(sources: [.init(path: name, text: Paths.read(Paths.invalidFixtures.appendingPathComponent(name)))])
        #expect(result.errors.count == 5)
        #expect(Set(result.errors.map(\.code)).count == 5, "five different defects, five different codes")
        #expect(result.errors.map(\.location.line) == [8, 15, 23, 24, 25])
    }

    @Test func errorsAcrossFilesAreSortedByFileAndLine() {
        let bad = """
            apiVersion: haven/v1
            kind: Repository
            metadata: {name: r}
            spec: {path: /x, compression: gzip}
            """
        let result = SpecLoader.load(sources: [
            .init(path: "b.yaml", text: bad), .init(path: "a.yaml", text: bad.replacingOccurrences(of: "name: r", with: "name: s")),
        ])
        #expect(result.errors.map(\.location.file) == ["a.yaml", "b.yaml"])
    }

    @Test func secretsAreNeverEchoed() {
        for name in ["inline-password.yaml", "password-in-url.yaml", "inline-encryption-key.yaml"] {
            let text = Paths.read(Paths.invalidFixtures.appendingPathComponent(name))
            let result = SpecLoader.load(sources: [.init(path: name, text: text)])
            for d in result.diagnostics {
                #expect(!d.message.contains("hunter2"))
                #expect(!d.message.contains("0123456789abcdef"))
            }
        }
    }
}
