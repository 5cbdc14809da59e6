/// A value as xapi puts it on the wire: what both XML-RPC and JSON-RPC can carry.
///
/// xapi's XML-RPC sends 64-bit ints as untyped text, so readers use the lenient accessors
/// (`intValue` accepts `"123"`), never a switch on the case.
public enum XenValue: Sendable, Hashable {
    case string(String)
    case int(Int64)
    case bool(Bool)
    case double(Double)
    /// xapi's text form, e.g. `20240115T10:30:00Z`.
    case dateTime(String)
    case array([XenValue])
    case structure([String: XenValue])
    case null

    public var stringValue: String? {
        switch self {
        case .string(let s), .dateTime(let s): s
        case .int(let i): String(i)
        case .bool(let b): b ? "true" : "false"
        case .double(let d): String(d)
        default: nil
        }
    }

    public var intValue: Int64? {
        switch self {
        case .int(let i): i
        case .string(let s): Int64(s)
        case .double(let d): d == d.rounded() ? Int64(exactly: d) : nil
        default: nil
        }
    }

    public var doubleValue: Double? {
        switch self {
        case .double(let d): d
        case .int(let i): Double(i)
        case .string(let s): Double(s)
        default: nil
        }
    }

    public var boolValue: Bool? {
        switch self {
        case .bool(let b): b
        case .string(let s): s == "true" || s == "1" ? true : (s == "false" || s == "0" ? false : nil)
        case .int(let i): i != 0
        default: nil
        }
    }

    public var arrayValue: [XenValue]? {
        if case .array(let a) = self { return a }
        // An empty set travels as an empty string in some xapi replies.
        if case .string(let s) = self, s.isEmpty { return [] }
        return nil
    }

    public var structValue: [String: XenValue]? {
        if case .structure(let s) = self { return s }
        if case .string(let s) = self, s.isEmpty { return [:] }
        return nil
    }

    public subscript(key: String) -> XenValue? { structValue?[key] }

    /// A `string -> string` map, as other_config and friends are.
    public var stringMap: [String: String] {
        (structValue ?? [:]).compactMapValues(\.stringValue)
    }

    public var stringArray: [String] { (arrayValue ?? []).compactMap(\.stringValue) }
}

extension XenValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: XenValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, XenValue)...) {
        self = .structure(Dictionary(elements, uniquingKeysWith: { _, b in b }))
    }
}

extension XenValue {
    public static func strings(_ values: [String]) -> XenValue { .array(values.map(XenValue.string)) }
    public static func map(_ values: [String: String]) -> XenValue { .structure(values.mapValues(XenValue.string)) }
}

/// Persisted form (the simulator's database): plain JSON where it is unambiguous, with
/// `{"$dt": …}` and `{"$f": …}` marking date-times and floats.
extension XenValue: Codable {
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let i = try? c.decode(Int64.self) {
            self = .int(i)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([XenValue].self) {
            self = .array(a)
        } else {
            let o = try c.decode([String: XenValue].self)
            if o.count == 1, let dt = o["$dt"]?.stringValue {
                self = .dateTime(dt)
            } else if o.count == 1, let f = o["$f"]?.doubleValue {
                self = .double(f)
            } else {
                self = .structure(o)
            }
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .int(let i): try c.encode(i)
        case .bool(let b): try c.encode(b)
        case .double(let d): try c.encode(["$f": d])
        case .dateTime(let s): try c.encode(["$dt": s])
        case .array(let a): try c.encode(a)
        case .structure(let o): try c.encode(o)
        case .null: try c.encodeNil()
        }
    }
}
