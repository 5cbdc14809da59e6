import Foundation
import Logging

/// How the daemon's log lines look: swift-log's plain text, or one JSON object per line (for
/// journald/Loki/Kubernetes collectors).
public enum LogFormat: String, Sendable, CaseIterable {
    case text, json
}

/// One JSON object per line on standard error: time, level, label, message, and the metadata as
/// string fields.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    let label: String

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(level: Logger.Level, message: Logger.Message, metadata extra: Logger.Metadata?, source: String, file: String,
                    function: String, line: UInt) {
        var fields: [String: String] = [:]
        for (k, v) in metadata.merging(extra ?? [:], uniquingKeysWith: { $1 }) { fields[k] = "\(v)" }
        fields["time"] = Date().formatted(.iso8601)
        fields["level"] = level.rawValue
        fields["label"] = label
        fields["message"] = message.description
        guard var data = try? JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        data.append(0x0A)
        FileHandle.standardError.write(data)
    }
}
