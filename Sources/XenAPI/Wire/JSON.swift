/// A small JSON reader and writer over `XenValue`: integers stay 64-bit, booleans stay booleans
/// (Foundation's JSONSerialization blurs the two on Linux), and large replies parse quickly.
public enum JSON {
    public struct ParseError: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var offset: Int
        public var description: String { "JSON parse error at byte \(offset): \(message)" }
    }

    /// Parses one JSON value; arrays and objects may nest at most `maxDepth` levels (the parser
    /// recurses once per level: an unbounded depth is a stack overflow on hostile input).
    public static func parse(_ bytes: [UInt8], maxDepth: Int = wireMaxNesting) throws -> XenValue {
        var p = Parser(bytes: bytes, maxDepth: maxDepth)
        let v = try p.value()
        p.skipSpace()
        guard p.i == bytes.count else { throw ParseError(message: "trailing characters", offset: p.i) }
        return v
    }

    public static func encode(_ value: XenValue) -> [UInt8] {
        var out: [UInt8] = []
        encode(value, into: &out)
        return out
    }

    public static func encode(_ value: XenValue, into out: inout [UInt8]) {
        switch value {
        case .string(let s), .dateTime(let s): appendString(s, to: &out)
        case .int(let i): out.append(contentsOf: String(i).utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .double(let d): out.append(contentsOf: (d.isFinite ? XMLRPC.formatDouble(d) : "0").utf8)
        case .null: out.append(contentsOf: "null".utf8)
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (n, item) in a.enumerated() {
                if n > 0 { out.append(UInt8(ascii: ",")) }
                encode(item, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .structure(let o):
            out.append(UInt8(ascii: "{"))
            for (n, key) in o.keys.sorted().enumerated() {
                if n > 0 { out.append(UInt8(ascii: ",")) }
                appendString(key, to: &out)
                out.append(UInt8(ascii: ":"))
                encode(o[key]!, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func appendString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: "\\\"".utf8)
            case UInt8(ascii: "\\"): out.append(contentsOf: "\\\\".utf8)
            case 0x0a: out.append(contentsOf: "\\n".utf8)
            case 0x0d: out.append(contentsOf: "\\r".utf8)
            case 0x09: out.append(contentsOf: "\\t".utf8)
            case 0..<0x20:
                let hex = String(b, radix: 16)
                out.append(contentsOf: ("\\u" + String(repeating: "0", count: 4 - hex.count) + hex).utf8)
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    struct Parser {
        let bytes: [UInt8]
        var maxDepth = wireMaxNesting
        var i = 0
        var depth = 0

        init(bytes: [UInt8], maxDepth: Int = wireMaxNesting) {
            self.bytes = bytes
            self.maxDepth = maxDepth
        }

        /// Enters an array or object; refuses before recursing past the limit.
        mutating func enter() throws {
            depth += 1
            guard depth <= maxDepth else {
                throw ReplyLimitError(.nestingTooDeep, limit: maxDepth, context: "JSON, byte \(i)")
            }
        }

        func fail(_ m: String) -> ParseError { ParseError(message: m, offset: i) }

        mutating func skipSpace() {
            while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0a || bytes[i] == 0x0d || bytes[i] == 0x09 { i += 1 }
        }

        mutating func value() throws -> XenValue {
            skipSpace()
            guard i < bytes.count else { throw fail("unexpected end") }
            switch bytes[i] {
            case UInt8(ascii: "{"):
                try enter()
                defer { depth -= 1 }
                i += 1
                var o: [String: XenValue] = [:]
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "}") {
                    i += 1
                    return .structure(o)
                }
                while true {
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a key") }
                    let k = try string()
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                    i += 1
                    o[k] = try value()
                    skipSpace()
                    guard i < bytes.count else { throw fail("unterminated object") }
                    if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                    if bytes[i] == UInt8(ascii: "}") { i += 1; return .structure(o) }
                    throw fail("expected ',' or '}'")
                }
            case UInt8(ascii: "["):
                try enter()
                defer { depth -= 1 }
                i += 1
                var a: [XenValue] = []
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "]") {
                    i += 1
                    return .array(a)
                }
                while true {
                    a.append(try value())
                    skipSpace()
                    guard i < bytes.count else { throw fail("unterminated array") }
                    if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                    if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
                    throw fail("expected ',' or ']'")
                }
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): try literal("true"); return .bool(true)
            case UInt8(ascii: "f"): try literal("false"); return .bool(false)
            case UInt8(ascii: "n"): try literal("null"); return .null
            default: return try number()
            }
        }

        mutating func literal(_ word: StaticString) throws {
            let n = word.utf8CodeUnitCount
            guard i + n <= bytes.count else { throw fail("unexpected end") }
            let ok = word.withUTF8Buffer { bytes[i..<(i + n)].elementsEqual($0) }
            guard ok else { throw fail("unexpected token") }
            i += n
        }

        mutating func number() throws -> XenValue {
            let start = i
            var isFloat = false
            while i < bytes.count {
                let b = bytes[i]
                if (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: "-") || b == UInt8(ascii: "+") {
                    i += 1
                } else if b == UInt8(ascii: ".") || b == UInt8(ascii: "e") || b == UInt8(ascii: "E") {
                    isFloat = true
                    i += 1
                } else {
                    break
                }
            }
            let text = String(decoding: bytes[start..<i], as: UTF8.self)
            if !isFloat, let v = Int64(text) { return .int(v) }
            guard let d = Double(text) else { throw ParseError(message: "bad number '\(text)'", offset: start) }
            return .double(d)
        }

        mutating func string() throws -> String {
            i += 1
            let start = i
            // Fast path: no escapes.
            while i < bytes.count, bytes[i] != UInt8(ascii: "\""), bytes[i] != UInt8(ascii: "\\") { i += 1 }
            guard i < bytes.count else { throw fail("unterminated string") }
            if bytes[i] == UInt8(ascii: "\"") {
                defer { i += 1 }
                return String(decoding: bytes[start..<i], as: UTF8.self)
            }
            var out = Array(bytes[start..<i])
            while i < bytes.count {
                let b = bytes[i]
                if b == UInt8(ascii: "\"") {
                    i += 1
                    return String(decoding: out, as: UTF8.self)
                }
                if b == UInt8(ascii: "\\") {
                    i += 1
                    guard i < bytes.count else { break }
                    let e = bytes[i]
                    i += 1
                    switch e {
                    case UInt8(ascii: "n"): out.append(0x0a)
                    case UInt8(ascii: "r"): out.append(0x0d)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0c)
                    case UInt8(ascii: "u"):
                        var scalar = try hex4()
                        if (0xD800..<0xDC00).contains(scalar), i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"),
                            bytes[i + 1] == UInt8(ascii: "u")
                        {
                            // Only a low surrogate completes the pair (anything else underflowed
                            // `low - 0xDC00`: a trap found by FuzzJSONRPC); otherwise the high one
                            // alone is U+FFFD and the next escape is read on its own.
                            let pairStart = i
                            i += 2
                            let low = try hex4()
                            if (0xDC00..<0xE000).contains(low) {
                                scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                            } else {
                                i = pairStart
                            }
                        }
                        out.append(contentsOf: String(Character(Unicode.Scalar(scalar) ?? "\u{FFFD}")).utf8)
                    default: out.append(e)
                    }
                } else {
                    out.append(b)
                    i += 1
                }
            }
            throw fail("unterminated string")
        }

        mutating func hex4() throws -> UInt32 {
            guard i + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[i..<(i + 4)], as: UTF8.self), radix: 16) else {
                throw fail("bad \\u escape")
            }
            i += 4
            return v
        }
    }
}

/// JSON-RPC at `/jsonrpc`, v2.0 for requests; replies mirror the request's version.
public enum JSONRPC {
    public static func request(method: String, params: [XenValue], id: Int) -> [UInt8] {
        JSON.encode(.structure(["jsonrpc": "2.0", "method": .string(method), "params": .array(params), "id": .int(Int64(id))]))
    }

    public static func parseResponse(_ bytes: [UInt8]) throws -> Result<XenValue, XenAPIError> {
        let reply = try JSON.parse(bytes)
        if let error = reply["error"], error != .null {
            if let message = error["message"]?.stringValue {
                return .failure(XenAPIError(code: message, parameters: error["data"]?.stringArray ?? []))
            }
            let list = error.stringArray
            return .failure(XenAPIError(code: list.first ?? "UNKNOWN_ERROR", parameters: Array(list.dropFirst())))
        }
        return .success(reply["result"] ?? .null)
    }

    /// What the simulator read: the method, its parameters, the id, and the protocol version.
    public struct Request: Sendable {
        public var method: String
        public var params: [XenValue]
        public var id: XenValue
        public var isVersion2: Bool
    }

    public static func parseRequest(_ bytes: [UInt8]) throws -> Request {
        let v = try JSON.parse(bytes)
        guard let method = v["method"]?.stringValue else { throw JSON.ParseError(message: "no method", offset: 0) }
        guard let id = v["id"], id != .null else { throw JSON.ParseError(message: "no id (notifications are not served)", offset: 0) }
        let params: [XenValue]
        switch v["params"] {
        case .array(let a)?: params = a
        case nil, .null?: params = []
        default: throw JSON.ParseError(message: "params must be an array", offset: 0)
        }
        return Request(method: method, params: params, id: id, isVersion2: v["jsonrpc"]?.stringValue == "2.0")
    }

    public static func response(_ outcome: Result<XenValue, XenAPIError>, id: XenValue, version2: Bool) -> [UInt8] {
        switch (outcome, version2) {
        case (.success(let v), true): JSON.encode(["jsonrpc": "2.0", "result": v, "id": id])
        case (.failure(let e), true):
            JSON.encode(["jsonrpc": "2.0", "error": ["code": 1, "message": .string(e.code), "data": .strings(e.parameters)], "id": id])
        case (.success(let v), false): JSON.encode(["result": v, "error": .null, "id": id])
        case (.failure(let e), false): JSON.encode(["result": .null, "error": .strings([e.code] + e.parameters), "id": id])
        }
    }
}
