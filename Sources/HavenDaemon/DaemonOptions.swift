import Foundation

/// How one `haven daemon` runs. Plain values; the CLI fills them from its arguments.
public struct DaemonOptions: Sendable {
    /// The configuration directory (a Git checkout, typically).
    public var configDirectory: String
    /// haven's state directory: catalog, locks, instance id.
    public var statePath: String
    public var listen: ListenAddress
    /// `git pull --ff-only` in the configuration directory this often; nil: never.
    public var gitPullInterval: Duration?
    /// How long running transfers may go on after SIGTERM before they are cancelled.
    public var shutdownGrace: Duration
    /// How often the configuration files' modification times are compared.
    public var configPollInterval: Duration = .seconds(2)
    /// How often every pool's housekeeping is queued again, whatever the events said (a safety
    /// net, as controller-runtime's resync period): it cleans up and resets every key's timer.
    public var resyncInterval: Duration = .seconds(600)
    /// How long a standby daemon waits between two attempts at the daemon lock.
    public var standbyPoll: Duration = .seconds(1)

    public init(configDirectory: String, statePath: String, listen: ListenAddress = ListenAddress(host: "127.0.0.1", port: 9810),
                gitPullInterval: Duration? = nil, shutdownGrace: Duration = .seconds(300)) {
        self.configDirectory = configDirectory
        self.statePath = statePath
        self.listen = listen
        self.gitPullInterval = gitPullInterval
        self.shutdownGrace = shutdownGrace
    }
}

/// `HOST:PORT` the HTTP endpoint binds (`127.0.0.1:9810`, `[::1]:9810`, `0.0.0.0:9810`; port 0: any free port).
public struct ListenAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init(parsing text: String) throws {
        guard let colon = text.lastIndex(of: ":") else {
            throw DaemonError(.usage, "--listen takes HOST:PORT (e.g. 127.0.0.1:9810), not '\(text)'")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw DaemonError(.usage, "--listen takes HOST:PORT with a port from 0 to 65535, not '\(text)'")
        }
        self.init(host: host, port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Parses a duration as the CLI takes it: `90s`, `5m`, `1h`, `1h30m`, or plain seconds.
public func parseDuration(_ text: String) throws -> Duration {
    if let seconds = Double(text), seconds >= 0 { return .milliseconds(Int64(seconds * 1000)) }
    var total: Int64 = 0
    var number = ""
    var sawUnit = false
    for ch in text {
        if ch.isNumber {
            number.append(ch)
            continue
        }
        let unit: Int64? = switch ch {
        case "s": 1
        case "m": 60
        case "h": 3600
        case "d": 86400
        default: nil
        }
        guard let unit, let n = Int64(number) else {
            throw DaemonError(.usage, "'\(text)' is no duration; write e.g. 30s, 5m, 1h30m")
        }
        total += n * unit
        number = ""
        sawUnit = true
    }
    guard sawUnit, number.isEmpty else { throw DaemonError(.usage, "'\(text)' is no duration; write e.g. 30s, 5m, 1h30m") }
    return .seconds(total)
}

/// An error of the daemon: a stable code and what happened.
public struct DaemonError: Error, Sendable, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        /// An argument the daemon cannot use.
        public static let usage = Code(rawValue: "usage")
        /// The configuration directory has no valid configuration at start.
        public static let config = Code(rawValue: "config")
        /// The state directory or the daemon lock cannot be used.
        public static let state = Code(rawValue: "state")
        /// The HTTP endpoint cannot listen.
        public static let listen = Code(rawValue: "listen")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
