import Foundation

/// Runs the built `haven` binary, as a user would, and captures what it prints.
struct HavenBinary {
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var path: String {
        if let override = ProcessInfo.processInfo.environment["HAVEN_BIN"] { return override }
        return packageRoot.appendingPathComponent(".build/debug/haven").path
    }

    struct Run {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// `environment` adds to (or, with nil values, removes from) the test's own environment.
    static func run(_ arguments: [String], in directory: URL = packageRoot, environment: [String: String?] = [:]) throws -> Run {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.currentDirectoryURL = directory
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        // Files, not pipes: a process another test starts meanwhile may inherit a pipe's write end
        // and keep it from ever reaching its end; a file is read once haven has exited.
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("haven-run-\(UUID().uuidString)")
        let outURL = scratch.appendingPathExtension("out"), errURL = scratch.appendingPathExtension("err")
        FileManager.default.createFile(atPath: outURL.path, contents: nil)
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer {
            try? FileManager.default.removeItem(at: outURL)
            try? FileManager.default.removeItem(at: errURL)
        }
        let out = try FileHandle(forWritingTo: outURL), err = try FileHandle(forWritingTo: errURL)
        process.standardOutput = out
        process.standardError = err
        try process.run()
        process.waitUntilExit()
        try? out.close()
        try? err.close()
        let outData = (try? Data(contentsOf: outURL)) ?? Data()
        let errData = (try? Data(contentsOf: errURL)) ?? Data()
        return Run(
            status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
            stderr: String(decoding: errData, as: UTF8.self))
    }
}

/// Runs a tool found on PATH and returns its exit status and its output (stdout and stderr together).
@discardableResult
func runTool(_ tool: String, _ args: [String]) throws -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = [tool] + args
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    return (p.terminationStatus, out)
}

/// SHA-256 of a file, by sha256sum.
func sha256(of path: String) throws -> String {
    let (status, out) = try runTool("sha256sum", [path])
    guard status == 0 else { throw CocoaError(.fileReadUnknown, userInfo: [NSFilePathErrorKey: path]) }
    return String(out.prefix(64))
}
