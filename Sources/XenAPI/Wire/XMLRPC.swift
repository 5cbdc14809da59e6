/// XML-RPC as xapi speaks it (ocaml-rpc, non-strict): strings and 64-bit ints as untyped
/// `<value>text</value>`, booleans as `<boolean>`, structs for maps and records, and every reply
/// a struct with `Status`, `Value` or `ErrorDescription` — never a `<fault>`.
public enum XMLRPC {
    // MARK: Encoding

    /// How a value is written: as xapi writes replies (untyped strings and ints), or as a client
    /// writes requests (typed `<string>`, `<int>`), which xapi also accepts.
    public enum Style: Sendable { case server, client }

    public static func encode(_ value: XenValue, style: Style, into out: inout [UInt8]) {
        func append(_ s: StaticString) { s.withUTF8Buffer { out.append(contentsOf: $0) } }
        switch value {
        case .string(let s):
            append(style == .server ? "<value>" : "<value><string>")
            appendEscaped(s, to: &out)
            append(style == .server ? "</value>" : "</string></value>")
        case .int(let i):
            if style == .server || Int32(exactly: i) == nil {
                append("<value>")
                out.append(contentsOf: String(i).utf8)
                append("</value>")
            } else {
                append("<value><int>")
                out.append(contentsOf: String(i).utf8)
                append("</int></value>")
            }
        case .bool(let b): append(b ? "<value><boolean>1</boolean></value>" : "<value><boolean>0</boolean></value>")
        case .double(let d):
            append("<value><double>")
            out.append(contentsOf: formatDouble(d).utf8)
            append("</double></value>")
        case .dateTime(let s):
            append("<value><dateTime.iso8601>")
            appendEscaped(s, to: &out)
            append("</dateTime.iso8601></value>")
        case .array(let items):
            append("<value><array><data>")
            for item in items { encode(item, style: style, into: &out) }
            append("</data></array></value>")
        case .structure(let members):
            append("<value><struct>")
            for key in members.keys.sorted() {
                append("<member><name>")
                appendEscaped(key, to: &out)
                append("</name>")
                encode(members[key]!, style: style, into: &out)
                append("</member>")
            }
            append("</struct></value>")
        case .null:
            append("<value></value>")
        }
    }

    static func formatDouble(_ d: Double) -> String {
        if d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) + ".0" }
        return String(d)
    }

    static func appendEscaped(_ s: String, to out: inout [UInt8]) {
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "<"): out.append(contentsOf: "&lt;".utf8)
            case UInt8(ascii: ">"): out.append(contentsOf: "&gt;".utf8)
            case UInt8(ascii: "&"): out.append(contentsOf: "&amp;".utf8)
            case UInt8(ascii: "\""): out.append(contentsOf: "&quot;".utf8)
            default: out.append(b)
            }
        }
    }

    /// A `methodCall` document.
    public static func request(method: String, params: [XenValue]) -> [UInt8] {
        var out: [UInt8] = Array("<?xml version='1.0'?>\n<methodCall><methodName>".utf8)
        appendEscaped(method, to: &out)
        out.append(contentsOf: "</methodName><params>".utf8)
        for p in params {
            out.append(contentsOf: "<param>".utf8)
            encode(p, style: .client, into: &out)
            out.append(contentsOf: "</param>".utf8)
        }
        out.append(contentsOf: "</params></methodCall>\n".utf8)
        return out
    }

    /// A `methodResponse` with xapi's envelope: success carries `Value`, failure `ErrorDescription`.
    public static func response(_ outcome: Result<XenValue, XenAPIError>) -> [UInt8] {
        let envelope: XenValue
        switch outcome {
        case .success(let v): envelope = .structure(["Status": "Success", "Value": v])
        case .failure(let e): envelope = .structure(["Status": "Failure", "ErrorDescription": .strings([e.code] + e.parameters)])
        }
        var out: [UInt8] = Array("<?xml version=\"1.0\"?><methodResponse><params><param>".utf8)
        encode(envelope, style: .server, into: &out)
        out.append(contentsOf: "</param></params></methodResponse>".utf8)
        return out
    }

    // MARK: Decoding

    public struct ParseError: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var offset: Int
        public var description: String { "XML-RPC parse error at byte \(offset): \(message)" }
    }

    /// Reads a `methodResponse` and unwraps xapi's envelope.
    public static func parseResponse(_ bytes: [UInt8]) throws -> Result<XenValue, XenAPIError> {
        var p = Scanner(bytes)
        try p.expectOpen("methodResponse")
        if try p.peekOpen("fault") {
            try p.expectOpen("fault")
            let fault = try p.value()
            let code = fault["faultCode"]?.stringValue ?? "?"
            let text = fault["faultString"]?.stringValue ?? ""
            return .failure(XenAPIError(code: "XMLRPC_FAULT", parameters: [code, text]))
        }
        try p.expectOpen("params")
        try p.expectOpen("param")
        let envelope = try p.value()
        return try unwrap(envelope)
    }

    static func unwrap(_ envelope: XenValue) throws -> Result<XenValue, XenAPIError> {
        guard let status = envelope["Status"]?.stringValue else {
            throw ParseError(message: "reply has no Status member", offset: 0)
        }
        if status == "Success" {
            return .success(envelope["Value"] ?? .null)
        }
        let description = envelope["ErrorDescription"]?.stringArray ?? []
        return .failure(XenAPIError(code: description.first ?? "UNKNOWN_ERROR", parameters: Array(description.dropFirst())))
    }

    /// Reads a `methodCall` (the simulator's side).
    public static func parseRequest(_ bytes: [UInt8]) throws -> (method: String, params: [XenValue]) {
        var p = Scanner(bytes)
        try p.expectOpen("methodCall")
        try p.expectOpen("methodName")
        let method = try p.text(until: "methodName")
        var params: [XenValue] = []
        if try p.peekOpen("params") {
            try p.expectOpen("params")
            while try p.peekOpen("param") {
                try p.expectOpen("param")
                params.append(try p.value())
                try p.expectClose("param")
            }
        }
        return (method, params)
    }

    /// Reads a lone `<value>…</value>` (task results carry one).
    public static func parseValue(_ text: String) throws -> XenValue {
        var p = Scanner(Array(text.utf8))
        return try p.value()
    }

    /// A byte-level scanner for the small XML subset XML-RPC uses; fast on multi-megabyte replies.
    struct Scanner {
        let bytes: [UInt8]
        var i = 0
        /// Arrays and structs open around the cursor; `value()` recurses once per level, so the
        /// depth is bounded before recursing (5,000 levels of `<array>` overflowed the stack).
        var depth = 0
        let maxDepth: Int

        init(_ bytes: [UInt8], maxDepth: Int = wireMaxNesting) {
            self.bytes = bytes
            self.maxDepth = maxDepth
        }

        mutating func enter() throws {
            depth += 1
            guard depth <= maxDepth else {
                throw ReplyLimitError(.nestingTooDeep, limit: maxDepth, context: "XML-RPC, byte \(i)")
            }
        }

        func fail(_ message: String) -> ParseError { ParseError(message: message, offset: i) }

        /// Skips white space, the XML declaration and comments.
        mutating func skipMisc() {
            while i < bytes.count {
                let b = bytes[i]
                if b == 0x20 || b == 0x0a || b == 0x0d || b == 0x09 {
                    i += 1
                } else if b == UInt8(ascii: "<"), i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "?") || bytes[i + 1] == UInt8(ascii: "!") {
                    while i < bytes.count, bytes[i] != UInt8(ascii: ">") { i += 1 }
                    i += 1
                } else {
                    return
                }
            }
        }

        /// Reads a tag at the cursor: the byte range of its name, whether it closes, whether it is
        /// self-closing. Names are compared as bytes: multi-megabyte replies allocate no tag strings.
        mutating func tag() throws -> (name: Range<Int>, closing: Bool, empty: Bool) {
            skipMisc()
            guard i < bytes.count, bytes[i] == UInt8(ascii: "<") else { throw fail("expected a tag") }
            i += 1
            var closing = false
            if i < bytes.count, bytes[i] == UInt8(ascii: "/") {
                closing = true
                i += 1
            }
            let start = i
            while i < bytes.count, bytes[i] != UInt8(ascii: ">"), bytes[i] != UInt8(ascii: "/"), bytes[i] != 0x20 { i += 1 }
            let end = i
            while i < bytes.count, bytes[i] != UInt8(ascii: ">") { i += 1 }
            guard i < bytes.count else { throw fail("unterminated tag") }
            let empty = bytes[i - 1] == UInt8(ascii: "/")
            i += 1
            return (start..<end, closing, empty)
        }

        func name(_ r: Range<Int>) -> String { String(decoding: bytes[r], as: UTF8.self) }

        func isName(_ r: Range<Int>, _ expected: String) -> Bool {
            bytes[r].elementsEqual(expected.utf8)
        }

        mutating func peekOpen(_ expected: String) throws -> Bool {
            let save = i
            defer { i = save }
            skipMisc()
            guard i < bytes.count, bytes[i] == UInt8(ascii: "<") else { return false }
            let t = try tag()
            return !t.closing && isName(t.name, expected)
        }

        mutating func expectOpen(_ expected: String) throws {
            let t = try tag()
            guard !t.closing, isName(t.name, expected) else {
                throw fail("expected <\(expected)>, found <\(t.closing ? "/" : "")\(name(t.name))>")
            }
        }

        mutating func expectClose(_ expected: String) throws {
            let t = try tag()
            guard t.closing, isName(t.name, expected) else {
                throw fail("expected </\(expected)>, found <\(t.closing ? "/" : "")\(name(t.name))>")
            }
        }

        /// Character data up to `</name>`, entities decoded.
        mutating func text(until name: String) throws -> String {
            let start = i
            while i < bytes.count, bytes[i] != UInt8(ascii: "<") { i += 1 }
            let raw = bytes[start..<i]
            try expectClose(name)
            return decodeEntities(raw)
        }

        func decodeEntities(_ raw: ArraySlice<UInt8>) -> String {
            guard raw.contains(UInt8(ascii: "&")) else { return String(decoding: raw, as: UTF8.self) }
            var out: [UInt8] = []
            out.reserveCapacity(raw.count)
            var j = raw.startIndex
            while j < raw.endIndex {
                let b = raw[j]
                if b == UInt8(ascii: "&"), let semi = raw[j...].firstIndex(of: UInt8(ascii: ";")), semi - j <= 10 {
                    let entity = String(decoding: raw[(j + 1)..<semi], as: UTF8.self)
                    var scalar: Unicode.Scalar?
                    switch entity {
                    case "lt": scalar = "<"
                    case "gt": scalar = ">"
                    case "amp": scalar = "&"
                    case "quot": scalar = "\""
                    case "apos": scalar = "'"
                    default:
                        if entity.hasPrefix("#x") || entity.hasPrefix("#X") {
                            scalar = UInt32(entity.dropFirst(2), radix: 16).flatMap(Unicode.Scalar.init)
                        } else if entity.hasPrefix("#") {
                            scalar = UInt32(entity.dropFirst()).flatMap(Unicode.Scalar.init)
                        }
                    }
                    if let scalar {
                        out.append(contentsOf: String(Character(scalar)).utf8)
                        j = semi + 1
                        continue
                    }
                }
                out.append(b)
                j += 1
            }
            return String(decoding: out, as: UTF8.self)
        }

        /// `<value>…</value>`, untyped text meaning a string.
        mutating func value() throws -> XenValue {
            let open = try tag()
            guard !open.closing, isName(open.name, "value") else {
                throw fail("expected <value>, found <\(open.closing ? "/" : "")\(name(open.name))>")
            }
            if open.empty { return .string("") }
            // Untyped content: text directly inside <value>.
            let save = i
            while i < bytes.count, bytes[i] != UInt8(ascii: "<") { i += 1 }
            if i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "/") {
                let s = decodeEntities(bytes[save..<i])
                try expectClose("value")
                return .string(s)
            }
            i = save
            let typeTag = try tag()
            let type = name(typeTag.name)
            let typeEmpty = typeTag.empty
            let result: XenValue
            switch type {
            case "string": result = typeEmpty ? .string("") : .string(try text(until: "string"))
            case "int", "i4", "i8":
                let t = try text(until: type)
                guard let v = Int64(t.trimmingWhitespace) else { throw fail("bad integer '\(t)'") }
                result = .int(v)
            case "boolean":
                let t = try text(until: "boolean").trimmingWhitespace
                result = .bool(t == "1" || t == "true")
            case "double":
                let t = try text(until: "double")
                guard let d = Double(t.trimmingWhitespace) else { throw fail("bad double '\(t)'") }
                result = .double(d)
            case "dateTime.iso8601": result = .dateTime(try text(until: "dateTime.iso8601"))
            case "base64": result = typeEmpty ? .string("") : .string(try text(until: "base64"))
            case "nil": result = .null
            case "array":
                try enter()
                defer { depth -= 1 }
                try expectOpen("data")
                var items: [XenValue] = []
                while try peekOpen("value") { items.append(try value()) }
                try expectClose("data")
                try expectClose("array")
                result = .array(items)
            case "struct":
                try enter()
                defer { depth -= 1 }
                var members: [String: XenValue] = [:]
                while try peekOpen("member") {
                    try expectOpen("member")
                    try expectOpen("name")
                    let key = try text(until: "name")
                    members[key] = try value()
                    try expectClose("member")
                }
                try expectClose("struct")
                result = .structure(members)
            default:
                throw fail("unknown XML-RPC type <\(type)>")
            }
            try expectClose("value")
            return result
        }
    }
}

extension String {
    var trimmingWhitespace: String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}
