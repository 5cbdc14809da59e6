import Foundation

// `make bench`: every figure is measured in this run and printed as a table; the numbers are
// merged into bench-results.json at the repository root.

var results: [String: Double] = [:]
results.merge(try benchSpec()) { _, b in b }
results.merge(try await benchXenAPI()) { _, b in b }
try mergeResults(results)
