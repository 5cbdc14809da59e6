import ArgumentParser
import HavenSpec

struct SchemaCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schema",
        abstract: "Print the JSON Schema (or the Markdown reference) of the haven/v1 YAML format.",
        discussion: """
            manifests/haven.schema.json and docs/spec.md are this command's output. Point your editor at \
            the schema, e.g. with a first line `# yaml-language-server: $schema=../manifests/haven.schema.json`.
            """
    )

    enum Format: String, ExpressibleByArgument, CaseIterable { case json, markdown }

    @Option(help: "json (JSON Schema draft-07) or markdown (field reference with defaults).")
    var format: Format = .json

    func run() {
        switch format {
        case .json: print(SpecSchema.jsonSchemaText(), terminator: "")
        case .markdown: print(SpecSchema.markdownReference(), terminator: "")
        }
    }
}
