import Foundation
import HavenSpec

// `make bench`: every figure is measured in this run and printed as a table; the numbers are
// merged into bench-results.json at the repository root.

// `haven-bench [spec|planner|xenapi|fleet|data|replication|daemon]…` runs the named parts (all by default); HAVEN_BENCH_GIB sets
// the size of the data-plane image (default 4).

let parts = Set(CommandLine.arguments.dropFirst())
func wants(_ part: String) -> Bool { parts.isEmpty || parts.contains(part) }
var results: [String: Double] = [:]
if wants("spec") { results.merge(try benchSpec()) { _, b in b } }
if wants("planner") { results.merge(try benchPlanner()) { _, b in b } }
if wants("xenapi") { results.merge(try await benchXenAPI()) { _, b in b } }
if wants("fleet") {
    results.merge(try await benchFleet(havenPath: havenNextToBench)) { _, b in b }
}
if wants("daemon") { results.merge(try await benchDaemon()) { _, b in b } }
if wants("data") {
    var bench = DataBench(sizeGiB: Int(ProcessInfo.processInfo.environment["HAVEN_BENCH_GIB"] ?? "") ?? 4,
                          chunkSize: ProcessInfo.processInfo.environment["HAVEN_BENCH_CHUNK"] ?? RepositorySpec.defaultChunkSize.description)
    try bench.measure()
    results.merge(bench.results) { _, b in b }
}
if wants("replication") {
    results.merge(try await benchReplication(sizeGiB: Int(ProcessInfo.processInfo.environment["HAVEN_BENCH_GIB"] ?? "") ?? 4, havenPath: havenNextToBench)) { _, b in b }
}
try mergeResults(results)
