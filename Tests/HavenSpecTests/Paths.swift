import Foundation

/// Locations inside the package checkout, found from this file's own path.
enum Paths {
    static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let fixtures = packageRoot.appendingPathComponent("Tests/HavenSpecTests/Fixtures")
    static let invalidFixtures = fixtures.appendingPathComponent("invalid")
    static let examples = packageRoot.appendingPathComponent("examples")

    static func read(_ url: URL) -> String {
        (try? String(contentsOf: url, encoding: .utf8)) ?? ""
    }

    static func invalidFixtureNames() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: invalidFixtures.path)) ?? []
        return names.filter { $0.hasSuffix(".yaml") }.sorted()
    }
}
