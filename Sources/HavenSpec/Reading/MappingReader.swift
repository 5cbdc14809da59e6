import Foundation
import Yams

/// State shared while one document is read: which file, where problems go, which resource.
final class ReadContext {
    let file: String
    let sink: DiagnosticSink
    /// "Pool 'lab'" once the document's kind and name are known.
    var resource: String = "document"

    init(file: String, sink: DiagnosticSink) {
        self.file = file
        self.sink = sink
    }

    func location(_ node: Node?) -> SourceLocation {
        let mark = node?.mark
        return SourceLocation(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1)
    }
}

extension Node {
    var isNull: Bool {
        if case .scalar(let s) = self { return s.style == .plain && (s.string.isEmpty || s.string == "~" || s.string == "null" || s.string == "Null" || s.string == "NULL") }
        return false
    }

    /// How a value looks to a user, for "found ..." in messages.
    var describedForMessage: String {
        switch self {
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        case .scalar(let s):
            if isNull { return "nothing (null)" }
            let shown = s.string.count > 40 ? String(s.string.prefix(40)) + "…" : s.string
            if s.style == .plain {
                if self.int != nil { return "the number \(shown)" }
                if self.bool != nil { return "the boolean \(shown)" }
                if self.float != nil { return "the number \(shown)" }
            }
            return "the string \"\(shown)\""
        }
    }
}

/// Reads one YAML mapping against its `ObjectShape`: reports unknown keys (with suggestions and
/// the inline-secret hint), conflicting and missing keys when created, and typed values on request.
/// Every problem goes to the context's sink; accessors return nil where the value is unusable.
struct MappingReader {
    let context: ReadContext
    let shape: ObjectShape
    /// Where the mapping's own key was written (for "missing field" errors).
    let location: SourceLocation
    private var entries: [String: (key: Node, value: Node)] = [:]
    /// Whether some key was not understood: checks of the whole mapping would only echo it.
    private(set) var hadUnknownKeys = false

    init?(node: Node, shape: ObjectShape, at location: SourceLocation, context: ReadContext) {
        self.context = context
        self.shape = shape
        self.location = location
        guard case .mapping(let mapping) = node else {
            context.sink.error(
                .wrongType, at: context.location(node), "'\(shape.path)' must be a mapping, found \(node.describedForMessage)")
            return nil
        }
        let allowed = shape.names
        // Keys a misspelling or a refused secret stands for: not reported again as missing.
        var accountedFor: Set<String> = []
        for (key, value) in mapping {
            guard case .scalar(let keyScalar) = key else {
                context.sink.error(.wrongType, at: context.location(key), "keys in \(displayName) must be plain text")
                continue
            }
            let name = keyScalar.string
            guard allowed.contains(name) else {
                hadUnknownKeys = true
                accountedFor.formUnion(reportUnknown(name, at: context.location(key)))
                continue
            }
            entries[name] = (key, value)
        }
        for group in shape.exclusive {
            let present = group.filter { has($0) }
            if present.count > 1 {
                let second = present.compactMap { entries[$0] }.map { context.location($0.key) }.max()!
                let names = present.map { "'\($0)'" }.joined(separator: " and ")
                context.sink.error(
                    .conflictingFields, at: second,
                    "\(names) in \(displayName) exclude each other; set only one")
            }
        }
        for group in shape.oneRequired where !group.contains(where: { has($0) || accountedFor.contains($0) }) {
            let names = group.map { "'\($0)'" }
            let list = names.count == 2 ? "\(names[0]) or \(names[1])" : names.dropLast().joined(separator: ", ") + " or " + names.last!
            context.sink.error(.missingField, at: location, "\(context.resource): \(displayName) needs \(list)")
        }
        for field in shape.fields where field.required && !has(field.name) && !accountedFor.contains(field.name) {
            context.sink.error(
                .missingField, at: location,
                "\(context.resource) is missing required field '\(path(field.name))'")
        }
    }

    /// How messages name this mapping: `'spec.retention'`, or "the document" at the top.
    var displayName: String { shape.path.isEmpty ? "the document" : "'\(shape.path)'" }

    /// Reports a key the shape does not know; returns the keys it probably stands for.
    private func reportUnknown(_ name: String, at loc: SourceLocation) -> [String] {
        let allowed = shape.names
        if let hint = SecretKeys.hint(forKey: name, allowed: allowed) {
            context.sink.error(.inlineSecret, at: loc, "'\(path(name))' is refused: \(hint)")
            return allowed.filter { $0.hasSuffix("Env") || $0.hasSuffix("File") }
        }
        if let guess = Suggestion.closest(to: name, in: allowed) {
            context.sink.error(.unknownKey, at: loc, "unknown key '\(name)' in \(displayName); did you mean '\(guess)'?")
            return [guess]
        } else {
            let list = allowed.joined(separator: ", ")
            context.sink.error(.unknownKey, at: loc, "unknown key '\(name)' in \(displayName) (known keys: \(list))")
            return []
        }
    }

    func path(_ key: String) -> String { shape.path.isEmpty ? key : "\(shape.path).\(key)" }

    /// The value node of a key that is present and not null.
    func node(_ key: String) -> Node? {
        assert(shape.field(key) != nil, "\(key) is not declared in the shape of \(shape.path)")
        guard let v = entries[key]?.value, !v.isNull else { return nil }
        return v
    }

    func has(_ key: String) -> Bool { entries[key].map { !$0.value.isNull } ?? false }

    func keyLocation(_ key: String) -> SourceLocation { entries[key].map { context.location($0.key) } ?? location }
    func valueLocation(_ key: String) -> SourceLocation { entries[key].map { context.location($0.value) } ?? location }

    func wrongType(_ key: String, _ node: Node, expected: String) {
        context.sink.error(
            .wrongType, at: context.location(node), "'\(path(key))' must be \(expected), found \(node.describedForMessage)")
    }

    // MARK: Scalars

    func string(_ key: String) -> Located<String>? {
        guard let n = node(key) else { return nil }
        guard case .scalar(let s) = n else {
            wrongType(key, n, expected: "text")
            return nil
        }
        return Located(s.string, at: context.location(n))
    }

    func bool(_ key: String) -> Bool? {
        guard let n = node(key) else { return nil }
        guard case .scalar(let s) = n, s.style == .plain, let b = n.bool else {
            wrongType(key, n, expected: "true or false")
            return nil
        }
        return b
    }

    func int(_ key: String) -> Int? {
        guard let n = node(key) else { return nil }
        guard case .scalar(let s) = n, s.style == .plain, let v = n.int else {
            wrongType(key, n, expected: "a whole number")
            return nil
        }
        if case .integer(let lo, let hi) = shape.field(key)?.type {
            if let lo, v < lo {
                context.sink.error(.invalidValue, at: context.location(n), "'\(path(key))' must be at least \(lo), found \(v)")
                return nil
            }
            if let hi, v > hi {
                context.sink.error(.invalidValue, at: context.location(n), "'\(path(key))' must be at most \(hi), found \(v)")
                return nil
            }
        }
        return v
    }

    /// A scalar run through a parser; the parser's message is wrapped with the field path.
    func parsed<T>(
        _ key: String, as what: String, code: SpecDiagnostic.Code, _ parse: (String) -> Result<T, ValueError>
    ) -> T? {
        guard let text = string(key) else { return nil }
        switch parse(text.value) {
        case .success(let v): return v
        case .failure(let e):
            context.sink.error(code, at: text.location, "invalid \(what) '\(text.value)' for '\(path(key))': \(e.message)")
            return nil
        }
    }

    func duration(_ key: String) -> SpecDuration? {
        parsed(key, as: "duration", code: .invalidDuration, SpecDuration.parse)
    }

    func size(_ key: String) -> ByteSize? {
        parsed(key, as: "size", code: .invalidSize, ByteSize.parse)
    }

    func enumeration<E: RawRepresentable>(_ key: String, _ type: E.Type) -> E? where E.RawValue == String {
        guard let text = string(key) else { return nil }
        if let v = E(rawValue: text.value) { return v }
        var choices: [String] = []
        if case .enumeration(let c) = shape.field(key)?.type { choices = c }
        var message = "'\(path(key))' must be one of \(choices.joined(separator: ", ")), found '\(text.value)'"
        if let guess = Suggestion.closest(to: text.value, in: choices) { message += "; did you mean '\(guess)'?" }
        context.sink.error(.invalidValue, at: text.location, message)
        return nil
    }

    // MARK: Collections

    func mapping(_ key: String) -> MappingReader? {
        guard case .object(let shape)? = self.shape.field(key)?.type else {
            preconditionFailure("\(key) is not an object field of \(self.shape.path)")
        }
        guard let n = node(key) else { return nil }
        return MappingReader(node: n, shape: shape, at: keyLocation(key), context: context)
    }

    func list(_ key: String) -> [Node]? {
        guard let n = node(key) else { return nil }
        guard case .sequence(let seq) = n else {
            wrongType(key, n, expected: "a list")
            return nil
        }
        return Array(seq)
    }

    /// A list of scalars; non-scalar items are reported and skipped.
    func stringList(_ key: String) -> [Located<String>]? {
        guard let items = list(key) else { return nil }
        var out: [Located<String>] = []
        for item in items {
            guard case .scalar(let s) = item, !item.isNull else {
                context.sink.error(
                    .wrongType, at: context.location(item),
                    "items of '\(path(key))' must be text, found \(item.describedForMessage)")
                continue
            }
            out.append(Located(s.string, at: context.location(item)))
        }
        return out
    }

    func stringMap(_ key: String) -> [String: String]? {
        guard let n = node(key) else { return nil }
        guard case .mapping(let m) = n else {
            wrongType(key, n, expected: "a mapping of text to text")
            return nil
        }
        var out: [String: String] = [:]
        for (k, v) in m {
            guard case .scalar(let ks) = k, case .scalar(let vs) = v else {
                context.sink.error(
                    .wrongType, at: context.location(v), "values in '\(path(key))' must be text, found \(v.describedForMessage)")
                continue
            }
            out[ks.string] = vs.string
        }
        return out
    }
}

extension ReadContext {
    /// Relative paths in a document are relative to the directory of the file that holds it,
    /// so a config directory can be moved or checked out anywhere.
    func resolvePath(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        let dir = URL(fileURLWithPath: file).deletingLastPathComponent()
        return URL(fileURLWithPath: path, relativeTo: dir).standardizedFileURL.path
    }
}
