import Foundation
import Testing

/// Runs `haven sim` as a user would and lets outside tools referee it: the official Python
/// XenAPI SDK, nbdinfo/nbdcopy (libnbd) and curl.
@Suite(.serialized) struct SimulatorRefereeTests {
    /// A running `haven sim` on loopback addresses of its own.
    final class RunningSim {
        let process = Process()
        let dir: URL
        var state: URL { dir.appendingPathComponent("state") }

        init(prefix: String) throws {
            dir = FileManager.default.temporaryDirectory.appendingPathComponent("haven-referee-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let world = """
                pools:
                  - name: referee
                    port: 4443
                    credentials: {username: root, password: referee-pw}
                    hosts:
                      - {name: ref-host1, address: "\(prefix).1"}
                      - {name: ref-host2, address: "\(prefix).2"}
                    srs: [{name: Local storage, type: ext, size: 16Gi}]
                    networks: [{name: Pool-wide network associated with eth0, purpose: [nbd]}]
                    vms:
                      - name: web
                        power: Running
                        disks: [{size: 8Mi, fill: {seed: 3}}]
                """
            try world.write(to: dir.appendingPathComponent("world.yaml"), atomically: true, encoding: .utf8)
            process.executableURL = URL(fileURLWithPath: HavenBinary.path)
            process.arguments = ["sim", "--world", dir.appendingPathComponent("world.yaml").path, "--state", state.path]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            let endpoints = state.appendingPathComponent("endpoints.json")
            for _ in 0..<300 where !FileManager.default.fileExists(atPath: endpoints.path) { usleep(50_000) }
        }

        deinit {
            process.terminate()
            process.waitUntilExit()
            try? FileManager.default.removeItem(at: dir)
        }
    }

    @Test func officialPythonSDKDrivesAWholeCBTCycle() throws {
        let sim = try RunningSim(prefix: "127.240.\(getpid() % 200)")
        let script = HavenBinary.packageRoot.appendingPathComponent("Tests/HavenCLITests/Referee/xenapi_cbt_cycle.py").path
        let (status, out) = try runTool("python3", [script, sim.state.path, HavenBinary.path, sim.dir.path])
        #expect(status == 0, "\(out)")
        #expect(out.contains("referee passed"))
    }

    @Test func simulatorStopsOnSIGTERMAndKeepsItsState() throws {
        let sim = try RunningSim(prefix: "127.241.\(getpid() % 200)")
        let endpoints = try Data(contentsOf: sim.state.appendingPathComponent("endpoints.json"))
        let list = try #require(try JSONSerialization.jsonObject(with: endpoints) as? [[String: Any]])
        #expect(list.first?["name"] as? String == "referee")
        #expect((list.first?["fingerprint"] as? String)?.count == 95)
        sim.process.terminate()
        sim.process.waitUntilExit()
        #expect(sim.process.terminationStatus == 0)
        #expect(FileManager.default.fileExists(atPath: sim.state.appendingPathComponent("pools/referee/db.json").path))
        let (rc, _) = try runTool("pgrep", ["-f", "nbd-\(sim.state.path)"])
        #expect(rc != 0, "nbdkit must not outlive the simulator")
    }
}
