import Foundation
import Yams

/// A simulated world: the pools `haven sim` serves, read from a YAML file.
public struct World: Codable, Sendable {
    public var pools: [PoolSpec]

    public struct PoolSpec: Codable, Sendable {
        public var name: String
        public var hosts: [HostSpec]
        public var port: Int?
        /// HTTPS unless false (plain HTTP is offered for speed in tests).
        public var tls: Bool?
        public var credentials: CredentialSpec?
        public var apiVersion: String?
        public var licence: LicenceSpec?
        public var srs: [SRSpec]?
        public var networks: [NetworkSpec]?
        public var templates: [VMSpec]?
        public var vms: [VMSpec]?
        public var faults: [String]?
    }

    public struct HostSpec: Codable, Sendable {
        public var name: String?
        public var address: String
    }

    public struct CredentialSpec: Codable, Sendable {
        public var username: String
        public var password: String
    }

    public struct LicenceSpec: Codable, Sendable {
        public var cbt: Bool?
    }

    public struct SRSpec: Codable, Sendable {
        public var name: String
        public var type: String?
        public var size: String?
        public var shared: Bool?
        public var `default`: Bool?
    }

    public struct NetworkSpec: Codable, Sendable {
        public var name: String
        public var purpose: [String]?
        public var bridge: String?
        /// A DHCP server's pool on this network, `FIRST-LAST` (IPv4): appliances without a static
        /// address lease one when they start.
        public var dhcp: String?
    }

    public struct VMSpec: Codable, Sendable {
        public var name: String
        public var power: String?
        public var tags: [String]?
        public var otherConfig: [String: String]?
        public var networks: [String]?
        public var memory: String?
        public var disks: [DiskSpec]?
        /// A data-mover appliance template: VMs cloned or copied from it run `haven mover` when
        /// started.
        public var appliance: Bool?

        enum CodingKeys: String, CodingKey {
            case name, power, tags, networks, memory, disks, appliance
            case otherConfig = "other_config"
        }
    }

    public struct DiskSpec: Codable, Sendable {
        public var name: String?
        public var size: String
        public var sr: String?
        public var fill: FillSpec?
    }

    /// How a disk's 64 KiB blocks are seeded: shares of never-written, random, compressible text
    /// and duplicated blocks (the rest, if the shares do not add up to 1, stays unallocated).
    public struct FillSpec: Codable, Sendable, Hashable {
        public var seed: UInt64?
        public var unallocated: Double?
        public var random: Double?
        public var text: Double?
        public var duplicate: Double?
    }

    public static func load(path: String) throws -> World {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var world: World
        do {
            world = try YAMLDecoder().decode(World.self, from: text)
        } catch {
            throw SimError("\(path): \(error)")
        }
        try world.normalisePowerStates(path: path, text: text)
        return world
    }

    /// xapi's spellings of `VM.power_state`.
    static let powerStates = ["Halted", "Paused", "Running", "Suspended"]

    /// Accepts power states in any case (`xe vm-list` prints `running`) and stores xapi's
    /// spelling, which every call compares against; refuses anything else with file:line:column.
    mutating func normalisePowerStates(path: String, text: String) throws {
        for p in pools.indices {
            for v in (pools[p].vms ?? []).indices {
                guard let given = pools[p].vms?[v].power else { continue }
                if let canonical = Self.powerStates.first(where: { $0.caseInsensitiveCompare(given) == .orderedSame }) {
                    pools[p].vms?[v].power = canonical
                    continue
                }
                let node = (try? Yams.compose(yaml: text))?["pools"]?[p]?["vms"]?[v]?["power"]
                let place = node?.mark.map { "\(path):\($0.line):\($0.column)" } ?? path
                throw SimError(
                    "\(place): VM '\(pools[p].vms?[v].name ?? "")': power '\(given)' is not a power state (\(Self.powerStates.joined(separator: ", ")))")
            }
        }
    }

    /// Sizes as `64Mi`, `4Gi` or bytes.
    static func bytes(_ text: String) throws -> Int64 {
        let units: [(String, Int64)] = [("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40)]
        for (suffix, m) in units where text.hasSuffix(suffix) {
            guard let n = Int64(text.dropLast(2)) else { break }
            return n * m
        }
        guard let n = Int64(text) else { throw SimError("'\(text)' is not a size (use e.g. 64Mi, 4Gi)") }
        return n
    }
}
