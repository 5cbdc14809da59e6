import Foundation
import Yams

#if canImport(Glibc)
    import Glibc
#endif

/// The outcome of reading a desired-state directory: the validated state when there were no
/// errors, and every diagnostic (errors and warnings) sorted by place.
public struct LoadResult: Sendable {
    public var state: DesiredState?
    public var diagnostics: [SpecDiagnostic]
    /// The files read, as displayed in diagnostics.
    public var files: [String]

    public var errors: [SpecDiagnostic] { diagnostics.filter { $0.severity == .error } }
    public var warnings: [SpecDiagnostic] { diagnostics.filter { $0.severity == .warning } }
    public var isValid: Bool { state != nil }
}

/// Reads every `*.yaml`/`*.yml` below a directory (recursively; several documents per file)
/// into a `DesiredState`. Nothing here talks to a pool.
public enum SpecLoader {
    /// One YAML text and the path to show for it.
    public struct Source: Sendable {
        public var path: String
        public var text: String
        public init(path: String, text: String) {
            self.path = path
            self.text = text
        }
    }

    /// Loads a directory or a single file. Paths in diagnostics start with `path` as given.
    public static func load(path: String) -> LoadResult {
        let sink = DiagnosticSink()
        var sources: [Source] = []
        var isDirectory: ObjCBool = false
        let fm = FileManager.default
        let root = SourceLocation(file: path, line: 1, column: 1)
        guard fm.fileExists(atPath: path, isDirectory: &isDirectory) else {
            sink.error(.noFiles, at: root, "no such file or directory")
            return finish(sources: [], sink: sink)
        }
        let files = isDirectory.boolValue ? discover(in: path) : [path]
        if files.isEmpty {
            sink.error(.noFiles, at: root, "no *.yaml or *.yml files found")
        }
        for file in files {
            guard let data = fm.contents(atPath: file) else {
                sink.error(.unreadableFile, at: SourceLocation(file: file, line: 1, column: 1), "cannot read file")
                continue
            }
            guard let text = String(data: data, encoding: .utf8) else {
                sink.error(.unreadableFile, at: SourceLocation(file: file, line: 1, column: 1), "file is not UTF-8 text")
                continue
            }
            sources.append(Source(path: file, text: text))
        }
        return load(sources: sources, sink: sink)
    }

    /// Loads YAML texts already in memory (tests, benchmarks, stdin).
    public static func load(sources: [Source]) -> LoadResult {
        load(sources: sources, sink: DiagnosticSink())
    }

    static func load(sources: [Source], sink: DiagnosticSink) -> LoadResult {
        var state = DesiredState()
        for source in sources {
            let context = ReadContext(file: source.path, sink: sink)
            do {
                let parser = try Parser(yaml: source.text, encoding: .utf8)
                while let root = try parser.nextRoot() {
                    readDocument(root, context: context, into: &state)
                }
            } catch let error as YamlError {
                reportYAML(error, file: source.path, sink: sink)
            } catch {
                sink.error(.yamlSyntax, at: SourceLocation(file: source.path, line: 1, column: 1), "\(error)")
            }
        }
        CrossValidator(state: state, sink: sink).run()
        return finish(sources: sources, sink: sink, state: state)
    }

    private static func finish(sources: [Source], sink: DiagnosticSink, state: DesiredState? = nil) -> LoadResult {
        // Stable sort keeps the order of problems found at the same place.
        let sorted = sink.items.enumerated().sorted { a, b in
            a.element.location == b.element.location ? a.offset < b.offset : a.element.location < b.element.location
        }.map(\.element)
        return LoadResult(state: sink.hasErrors ? nil : state, diagnostics: sorted, files: sources.map(\.path))
    }

    private static func reportYAML(_ error: YamlError, file: String, sink: DiagnosticSink) {
        func loc(_ mark: Mark) -> SourceLocation { SourceLocation(file: file, line: mark.line, column: mark.column) }
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            var message = "YAML syntax error: \(problem)"
            if let context { message += " (\(context.text) at line \(context.mark.line), column \(context.mark.column))" }
            sink.error(.yamlSyntax, at: loc(mark), message)
        case .duplicatedKeysInMapping(let duplicates, let context):
            let keys = duplicates.map { "'\($0)'" }.joined(separator: ", ")
            sink.error(.duplicateKey, at: loc(context.mark), "duplicate key \(keys) in one mapping; YAML keeps only one of them")
        case .reader(let problem, _, _, _):
            sink.error(.yamlSyntax, at: SourceLocation(file: file, line: 1, column: 1), "YAML reader error: \(problem)")
        default:
            sink.error(.yamlSyntax, at: SourceLocation(file: file, line: 1, column: 1), "YAML error: \(error)")
        }
    }

    static let documentShape = ObjectShape(
        path: "",
        fields: [
            FieldInfo("apiVersion", .enumeration([havenAPIVersion]), required: true, "Always haven/v1."),
            FieldInfo("kind", .enumeration(ResourceKind.allCases.map(\.rawValue)), required: true, "What the document declares."),
            FieldInfo("metadata", .object(Metadata.shape), required: true, "Name and labels."),
            FieldInfo("spec", .text, required: true, "The declaration; its keys depend on the kind."),
        ])

    private static func readDocument(_ root: Node, context: ReadContext, into state: inout DesiredState) {
        if root.isNull { return }
        context.resource = "document"
        guard case .mapping = root else {
            context.sink.error(
                .notAMapping, at: context.location(root),
                "a document must be a mapping with apiVersion, kind, metadata and spec, found \(root.describedForMessage)")
            return
        }
        // Check apiVersion and kind before anything else: with either wrong, the keys below mean nothing.
        var lenient = documentShape
        for i in lenient.fields.indices where lenient.fields[i].name == "metadata" || lenient.fields[i].name == "spec" {
            lenient.fields[i].required = false
        }
        guard let doc = MappingReader(node: root, shape: lenient, at: context.location(root), context: context) else { return }
        guard let apiVersion = doc.string("apiVersion") else { return }
        guard apiVersion.value == havenAPIVersion else {
            context.sink.error(
                .unknownAPIVersion, at: apiVersion.location,
                "unknown apiVersion '\(apiVersion.value)'; this haven reads '\(havenAPIVersion)'")
            return
        }
        guard let kindText = doc.string("kind") else { return }
        guard let kind = ResourceKind(rawValue: kindText.value) else {
            let kinds = ResourceKind.allCases.map(\.rawValue)
            var message = "unknown kind '\(kindText.value)'"
            if let guess = Suggestion.closest(to: kindText.value, in: kinds) {
                message += "; did you mean '\(guess)'?"
            } else {
                message += " (known kinds: \(kinds.joined(separator: ", ")))"
            }
            context.sink.error(.unknownKind, at: kindText.location, message)
            return
        }
        context.resource = kind.rawValue
        for key in ["metadata", "spec"] where !doc.has(key) {
            context.sink.error(.missingField, at: context.location(root), "\(kind.rawValue) document is missing required field '\(key)'")
        }
        var metadata = Metadata(name: "", labels: [:], annotations: [:])
        let metadataReader = doc.mapping("metadata")
        if let m = metadataReader {
            if let name = m.string("name") {
                if Metadata.isValidName(name.value) {
                    metadata.name = name.value
                    context.resource = "\(kind.rawValue) '\(name.value)'"
                } else {
                    context.sink.error(
                        .invalidName, at: name.location,
                        "invalid name '\(name.value)': use lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters")
                }
            }
            metadata.labels = m.stringMap("labels") ?? [:]
            metadata.annotations = m.stringMap("annotations") ?? [:]
        }
        let source = context.location(root)
        let nameLocation = metadataReader?.valueLocation("name") ?? source
        guard let specNode = doc.node("spec") else { return }
        let specLocation = doc.keyLocation("spec")
        func reader(_ shape: ObjectShape) -> MappingReader? {
            MappingReader(node: specNode, shape: shape, at: specLocation, context: context)
        }
        func make<S: ResourceSpec>(_ spec: S) -> Resource<S> {
            Resource(metadata: metadata, spec: spec, source: source, nameLocation: nameLocation)
        }
        switch kind {
        case .pool: if let r = reader(PoolSpec.shape) { state.pools.append(make(PoolSpec(r))) }
        case .repository: if let r = reader(RepositorySpec.shape) { state.repositories.append(make(RepositorySpec(r))) }
        case .appliancePool:
            if let r = reader(AppliancePoolSpec.shape) { state.appliancePools.append(make(AppliancePoolSpec(r))) }
        case .backupPolicy:
            if let r = reader(BackupPolicySpec.shape) { state.backupPolicies.append(make(BackupPolicySpec(r))) }
        case .replicationPolicy:
            if let r = reader(ReplicationPolicySpec.shape) { state.replicationPolicies.append(make(ReplicationPolicySpec(r))) }
        }
    }

    /// Every YAML file below `root`, sorted, leaving out hidden entries and `.havenignore` matches.
    static func discover(in root: String) -> [String] {
        let fm = FileManager.default
        let ignore = IgnoreRules(root: root)
        var out: [String] = []
        func walk(_ relative: String) {
            let full = relative.isEmpty ? root : join(root, relative)
            guard let names = try? fm.contentsOfDirectory(atPath: full) else { return }
            for name in names.sorted() where !name.hasPrefix(".") {
                let rel = relative.isEmpty ? name : "\(relative)/\(name)"
                var isDir: ObjCBool = false
                guard fm.fileExists(atPath: join(root, rel), isDirectory: &isDir) else { continue }
                if ignore.ignores(rel, isDirectory: isDir.boolValue) { continue }
                if isDir.boolValue {
                    walk(rel)
                } else if name.hasSuffix(".yaml") || name.hasSuffix(".yml") {
                    out.append(join(root, rel))
                }
            }
        }
        walk("")
        return out
    }

    static func join(_ root: String, _ rel: String) -> String {
        if root == "." { return rel }
        return root.hasSuffix("/") ? root + rel : root + "/" + rel
    }
}

/// `.havenignore` at the root of a config directory: one glob per line (`#` comments), matched
/// against paths relative to the root; a trailing `/` matches directories only.
struct IgnoreRules {
    var patterns: [(glob: String, directoryOnly: Bool)] = []

    init(root: String) {
        let file = SpecLoader.join(root, ".havenignore")
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { return }
        for raw in text.split(whereSeparator: \.isNewline) {
            var line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let dirOnly = line.hasSuffix("/")
            if dirOnly { line.removeLast() }
            if line.hasPrefix("/") { line.removeFirst() }
            patterns.append((line, dirOnly))
        }
    }

    func ignores(_ relative: String, isDirectory: Bool) -> Bool {
        let base = relative.split(separator: "/").last.map(String.init) ?? relative
        for p in patterns where !p.directoryOnly || isDirectory {
            // A pattern without '/' matches at any depth, as in .gitignore.
            let subject = p.glob.contains("/") ? relative : base
            if fnmatch(p.glob, subject, 0) == 0 { return true }
        }
        return false
    }
}
