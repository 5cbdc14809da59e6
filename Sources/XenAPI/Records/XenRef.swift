/// An object reference (`OpaqueRef:…`), typed by the record class it points to. Opaque: never parsed.
public struct XenRef<Record>: Hashable, Sendable, Codable, CustomStringConvertible {
    public var raw: String

    public init(_ raw: String) { self.raw = raw }

    public static var null: XenRef { XenRef("OpaqueRef:NULL") }
    public var isNull: Bool { raw == "OpaqueRef:NULL" || raw.isEmpty }
    public var description: String { raw }
    public var value: XenValue { .string(raw) }

    public init(from decoder: any Decoder) throws { raw = try decoder.singleValueContainer().decode(String.self) }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(raw)
    }
}

/// A record type with its xapi class name, built from the wire tolerating unknown fields.
public protocol XenRecord: Sendable {
    static var className: String { get }
    init(_ fields: [String: XenValue])
}

extension Dictionary where Key == String, Value == XenValue {
    func string(_ k: String) -> String { self[k]?.stringValue ?? "" }
    func int(_ k: String) -> Int64 { self[k]?.intValue ?? 0 }
    func double(_ k: String) -> Double { self[k]?.doubleValue ?? 0 }
    func bool(_ k: String) -> Bool { self[k]?.boolValue ?? false }
    func ref<R>(_ k: String) -> XenRef<R> { XenRef(self[k]?.stringValue ?? "OpaqueRef:NULL") }
    func refs<R>(_ k: String) -> [XenRef<R>] { (self[k]?.stringArray ?? []).map(XenRef.init) }
    func map(_ k: String) -> [String: String] { self[k]?.stringMap ?? [:] }
    func strings(_ k: String) -> [String] { self[k]?.stringArray ?? [] }
}
