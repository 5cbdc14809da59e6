import HavenSpec
let r = SpecLoader.load(path: CommandLine.arguments.dropFirst().first ?? ".")
for d in r.diagnostics { print(d) }
