import Foundation
import Testing

/// The deploy files the daemon ships (issue 11, "Deploy"), read as a cluster and a container
/// engine would: the Deployment's containers pin their images and carry resources, probes and a
/// locked-down securityContext; the image runs as a non-root user; the build context leaves the
/// local build directories out; the systemd unit's exposure stays at most 3.
@Suite struct DeployManifestTests {
    static let root = HavenBinary.packageRoot

    /// Every container of every document of the Kubernetes manifests, as PyYAML reads them.
    @Test func kubernetesContainersArePinnedBoundedAndLockedDown() throws {
        let script = """
            import sys, yaml
            bad = []
            for path in sys.argv[1:]:
                for doc in yaml.safe_load_all(open(path)):
                    if not doc or doc.get("kind") not in ("Deployment", "CronJob"): continue
                    spec = doc["spec"]
                    pod = spec["jobTemplate"]["spec"]["template"]["spec"] if doc["kind"] == "CronJob" else spec["template"]["spec"]
                    if not pod.get("securityContext", {}).get("runAsNonRoot"): bad.append(f"{path}: pod not runAsNonRoot")
                    for c in pod["containers"]:
                        name, image = c["name"], c["image"]
                        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
                        if tag in ("", "latest") and "@sha256:" not in image: bad.append(f"{path}: {name}: image {image} is not pinned")
                        r = c.get("resources", {})
                        if not r.get("requests") or not r.get("limits"): bad.append(f"{path}: {name}: no resources requests and limits")
                        sc = c.get("securityContext", {})
                        if not sc.get("readOnlyRootFilesystem"): bad.append(f"{path}: {name}: root filesystem not read-only")
                        if sc.get("allowPrivilegeEscalation") is not False: bad.append(f"{path}: {name}: privilege escalation allowed")
                    if doc["kind"] == "Deployment":
                        haven = pod["containers"][0]
                        if haven.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz": bad.append("no /healthz liveness probe")
                        if haven.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz": bad.append("no /readyz readiness probe")
                        if not any(c["name"] == "git-sync" for c in pod["containers"]): bad.append("no git-sync sidecar")
            print("\\n".join(bad) if bad else "ok")
            sys.exit(1 if bad else 0)
            """
        let files = ["haven-daemon.yaml", "haven-cronjob.yaml"].map { Self.root.appendingPathComponent("manifests/kubernetes/\($0)").path }
        let r = try runTool("python3", ["-c", script] + files)
        #expect(r.status == 0, "\(r.output)")
    }

    /// The runtime stage of the Containerfile switches to a non-root user, and the build context
    /// (the repository root) has a `.containerignore` that leaves `.build` out.
    @Test func theImageRunsAsNonRootAndTheContextLeavesBuildsOut() throws {
        let containerfile = try String(contentsOf: Self.root.appendingPathComponent("manifests/container/Containerfile"), encoding: .utf8)
        let lines = containerfile.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        let lastFrom = try #require(lines.lastIndex { $0.hasPrefix("FROM ") })
        #expect(lines.filter { $0.hasPrefix("FROM ") }.count >= 2, "multi-stage")
        let user = lines[lastFrom...].last { $0.hasPrefix("USER ") }
        let who = user.map { String($0.dropFirst(5)).split(separator: ":").first.map(String.init) ?? "" }
        #expect(who != nil && who != "root" && who != "0", "the runtime stage runs as \(who ?? "root (no USER)")")
        let ignore = try String(contentsOf: Self.root.appendingPathComponent(".containerignore"), encoding: .utf8)
        let patterns = ignore.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") }
        #expect(patterns.contains { $0.hasPrefix(".build") }, "\(patterns)")
        #expect(patterns.contains(".git/") || patterns.contains(".git"), "\(patterns)")
    }

    /// `systemd-analyze security` rates the daemon's unit at most 3 (issue 11's bar).
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze"), "needs systemd-analyze"))
    func theSystemdUnitExposureIsAtMostThree() throws {
        let unit = Self.root.appendingPathComponent("manifests/systemd/haven-daemon.service").path
        let r = try runTool("systemd-analyze", ["security", "--offline=yes", "--no-pager", unit])
        let line = try #require(r.output.split(separator: "\n").first { $0.contains("Overall exposure level") }, "\(r.output)")
        let number = line.split(separator: ":").last?.split(separator: " ").first.flatMap { Double($0) }
        let exposure = try #require(number, "\(line)")
        #expect(exposure <= 3, "\(line)")
    }
}
