import Foundation
import Testing

@testable import XenAPI

@Suite struct WireTests {
    @Test func xmlrpcRepliesAreEncodedAsXapiDoes() throws {
        let v: XenValue = ["name": "web & <db>", "size": .int(4_294_967_296), "on": true, "when": .dateTime("20240115T10:30:00Z"),
                           "list": ["a", "b"], "ratio": .double(0.5)]
        let bytes = XMLRPC.response(.success(v))
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.contains("<value>web &amp; &lt;db&gt;</value>"), "strings are untyped")
        #expect(text.contains("<value>4294967296</value>"), "64-bit ints are untyped text")
        #expect(text.contains("<boolean>1</boolean>"))
        #expect(text.contains("<dateTime.iso8601>20240115T10:30:00Z</dateTime.iso8601>"))
        #expect(text.contains("<member><name>Status</name><value>Success</value></member>"))
        let back = try XMLRPC.parseResponse(bytes).get()
        #expect(back["size"]?.intValue == 4_294_967_296)
        #expect(back["name"]?.stringValue == "web & <db>")
        #expect(back["on"]?.boolValue == true)
        #expect(back["list"]?.stringArray == ["a", "b"])
    }

    @Test func xmlrpcFailuresCarryTheErrorDescription() throws {
        let bytes = XMLRPC.response(.failure(XenAPIError(code: "VDI_IN_USE", parameters: ["OpaqueRef:1", "data_destroy"])))
        #expect(throws: Never.self) { try XMLRPC.parseResponse(bytes) }
        let outcome = try XMLRPC.parseResponse(bytes)
        #expect(outcome == .failure(XenAPIError(code: "VDI_IN_USE", parameters: ["OpaqueRef:1", "data_destroy"])))
    }

    @Test func xmlrpcRequestsParseBack() throws {
        let bytes = XMLRPC.request(method: "VM.snapshot", params: ["OpaqueRef:s", "OpaqueRef:vm", "name", .array([]), .int(5)])
        let (method, params) = try XMLRPC.parseRequest(bytes)
        #expect(method == "VM.snapshot")
        #expect(params == ["OpaqueRef:s", "OpaqueRef:vm", "name", .array([]), .int(5)])
        // What the Python SDK sends: typed strings, <int>, an empty <string/>, entities.
        let python = """
            <?xml version='1.0'?>
            <methodCall>
            <methodName>VM.add_to_other_config</methodName>
            <params>
            <param><value><string>OpaqueRef:a</string></value></param>
            <param><value><int>42</int></value></param>
            <param><value><string/></value></param>
            <param><value><string>&#233;t&#xE9; &amp; co</string></value></param>
            </params>
            </methodCall>
            """
        let (m2, p2) = try XMLRPC.parseRequest(Array(python.utf8))
        #expect(m2 == "VM.add_to_other_config")
        #expect(p2 == ["OpaqueRef:a", .int(42), "", "été & co"])
    }

    @Test func jsonrpcVersionsAreMirrored() throws {
        let v2 = JSONRPC.response(.failure(XenAPIError(code: "HANDLE_INVALID", parameters: ["VM", "x"])), id: 7, version2: true)
        let parsed = try JSON.parse(v2)
        #expect(parsed["jsonrpc"]?.stringValue == "2.0")
        #expect(parsed["error"]?["code"]?.intValue == 1)
        #expect(parsed["error"]?["message"]?.stringValue == "HANDLE_INVALID")
        #expect(try JSONRPC.parseResponse(v2) == .failure(XenAPIError(code: "HANDLE_INVALID", parameters: ["VM", "x"])))
        let v1 = JSONRPC.response(.failure(XenAPIError(code: "SESSION_INVALID", parameters: ["s"])), id: "a", version2: false)
        #expect(try JSON.parse(v1)["error"]?.stringArray == ["SESSION_INVALID", "s"])
        #expect(try JSONRPC.parseResponse(v1) == .failure(XenAPIError(code: "SESSION_INVALID", parameters: ["s"])))
        let ok = JSONRPC.response(.success(.int(Int64.max)), id: 1, version2: true)
        #expect(try JSONRPC.parseResponse(ok).get() == .int(Int64.max), "full 64-bit integers survive")
    }

    @Test func jsonHandlesEscapesAndUnicode() throws {
        let v = try JSON.parse(Array(#"{"a":"x\"y\\z\n\u00e9\ud83d\ude00","b":[true,false,null,-12,1.5e3]}"#.utf8))
        #expect(v["a"]?.stringValue == "x\"y\\z\né😀")
        #expect(v["b"]?.arrayValue == [.bool(true), .bool(false), .null, .int(-12), .double(1500)])
        #expect(try JSON.parse(JSON.encode(v)) == v)
        #expect(throws: JSON.ParseError.self) { try JSON.parse(Array("{\"a\":".utf8)) }
    }

    @Test func transientErrorsAreClassified() {
        #expect(XenAPIError(code: "VDI_IN_USE", parameters: []).isTransient)
        #expect(!XenAPIError(code: "HANDLE_INVALID", parameters: []).isTransient)
    }

    @Test func fingerprintsParse() {
        #expect(TLSPolicy.fingerprint(String(repeating: "0A:", count: 31) + "0A") == .pinnedSHA256(Array(repeating: 10, count: 32)))
        #expect(TLSPolicy.fingerprint("zz") == nil)
    }
}

@Suite struct RedactionTests {
    @Test func sessionReferencesNeverAppearInTransportErrors() {
        let e = HTTPTransportError(curlCode: 7, message: "Couldn't connect", url: "https://127.0.0.1/export_raw_vdi?session_id=OpaqueRef:secret-ref&vdi=x")
        #expect(!e.description.contains("secret-ref"))
        #expect(e.description.contains("vdi=x"))
    }
}
