import Foundation
import Testing

@testable import XenAPI

/// Holds the client to the real XenAPI: every method it can send exists in xapi's data model with
/// that many parameters, and every error code it acts on is one xapi has.
@Suite struct DataModelConformanceTests {
    static let shared = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("shared")

    struct Model {
        var params: [String: Int] = [:]
        var errors: Set<String> = []
    }

    static func load() throws -> Model {
        let data = try Data(contentsOf: shared.appendingPathComponent("xenapi/datamodel.json"))
        let classes = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        var model = Model()
        for cls in classes {
            let name = cls["name"] as? String ?? ""
            for m in cls["messages"] as? [[String: Any]] ?? [] {
                let message = m["name"] as? String ?? ""
                model.params["\(name).\(message)"] = (m["params"] as? [Any])?.count ?? 0
                for e in m["errors"] as? [[String: Any]] ?? [] { model.errors.insert(e["name"] as? String ?? "") }
            }
        }
        // Generic messages are implicit in the data model; xapi generates them for every class.
        for cls in classes {
            let name = cls["name"] as? String ?? ""
            model.params["\(name).get_all_records"] = model.params["\(name).get_all_records"] ?? 1
            model.params["\(name).get_record"] = model.params["\(name).get_record"] ?? 2
            model.params["\(name).get_by_uuid"] = model.params["\(name).get_by_uuid"] ?? 2
            for f in cls["fields"] as? [[String: Any]] ?? [] {
                let field = f["name"] as? String ?? ""
                let type = f["type"] as? String ?? ""
                let qualifier = f["qualifier"] as? String ?? ""
                if qualifier == "RW" {
                    model.params["\(name).set_\(field)"] = 3
                    if type.contains("->") {
                        model.params["\(name).add_to_\(field)"] = 4
                        model.params["\(name).remove_from_\(field)"] = 3
                    }
                    if type.hasSuffix(" set") {
                        model.params["\(name).add_\(field)"] = 3
                        model.params["\(name).remove_\(field)"] = 3
                    }
                }
            }
        }
        // The error list of XENAPI.md section 8 (xapi's api_errors.ml), for codes no message lists.
        let notes = try String(contentsOf: shared.appendingPathComponent("XENAPI.md"), encoding: .utf8)
        if let range = notes.range(of: "## 8. Error codes") {
            let section = notes[range.upperBound...]
            let regex = /([A-Z][A-Z0-9_]{3,})/
            for match in section.matches(of: regex) { model.errors.insert(String(match.1)) }
        }
        return model
    }

    @Test func everyMethodExistsWithItsParameterCount() throws {
        let model = try Self.load()
        for method in XenMethod.all {
            let expected = try #require(model.params[method.name], "\(method.name) is not in xapi's data model")
            #expect(method.arity + method.omittedTrailing == expected, "\(method.name): sends \(method.arity), data model has \(expected)")
        }
    }

    @Test func everyHandledErrorCodeExists() throws {
        let model = try Self.load()
        for code in XenAPIError.Code.all {
            // SM failures are one family, SR_BACKEND_FAILURE_<n>, in xapi's list.
            let family = code.hasPrefix("SR_BACKEND_FAILURE_") && Int(code.dropFirst(19)) != nil ? "SR_BACKEND_FAILURE_" : code
            #expect(model.errors.contains(family), "\(code) is not an xapi error code")
        }
    }
}
