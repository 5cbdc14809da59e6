import Foundation
import HavenCore

/// Runs a pre/post-snapshot hook: the command array directly (no shell), a timeout, output kept.
enum HookRunner {
    struct Outcome {
        var status: Int32
        var output: String
        var timedOut: Bool
        var ok: Bool { status == 0 && !timedOut }
    }

    /// The hook sees only PATH, LANG and the variables that describe the job: never haven's own
    /// environment, which holds pool passwords (`passwordEnv`).
    static func run(_ hook: HookJob, environment: [String: String]) async throws -> Outcome {
        guard let program = hook.command.first else { return Outcome(status: 0, output: "", timedOut: false) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: program.hasPrefix("/") ? program : "/usr/bin/env")
        p.arguments = program.hasPrefix("/") ? Array(hook.command.dropFirst()) : hook.command
        let inherited = ProcessInfo.processInfo.environment
        var env = ["PATH": inherited["PATH"] ?? "/usr/local/bin:/usr/bin:/bin", "LANG": inherited["LANG"] ?? "C.UTF-8"]
        env.merge(environment) { _, b in b }
        p.environment = env
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let reader = Task.detached { String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self) }
        let deadline = Date().addingTimeInterval(Double(hook.timeoutSeconds))
        var timedOut = false
        while p.isRunning {
            if Date() >= deadline {
                timedOut = true
                p.terminate()
                try? await Task.sleep(for: .milliseconds(200))
                if p.isRunning { kill(p.processIdentifier, SIGKILL) }
                break
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        p.waitUntilExit()
        return Outcome(status: p.terminationStatus, output: await reader.value, timedOut: timedOut)
    }
}
