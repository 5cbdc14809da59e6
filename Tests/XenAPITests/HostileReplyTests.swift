import Foundation
import Testing

@testable import XenAPI

/// A pool's replies cannot crash haven, exhaust its memory or hang it: nesting is bounded in both
/// decoders, reply size while receiving, and silence by timeouts (issue 13, defect 3).
@Suite struct HostileReplyTests {
    static func nestedXML(_ depth: Int) -> [UInt8] {
        let open = String(repeating: "<value><array><data>", count: depth)
        let close = String(repeating: "</data></array></value>", count: depth)
        let text = "<?xml version=\"1.0\"?><methodResponse><params><param><value><struct><member><name>Status</name>"
            + "<value>Success</value></member><member><name>Value</name>\(open)\(close)</member></struct></value>"
            + "</param></params></methodResponse>"
        return Array(text.utf8)
    }

    static func client(_ server: HostileServer, wire: WireProtocol, limits: XenAPILimits = XenAPILimits()) -> XenAPIClient {
        XenAPIClient(url: server.url, credentials: XenCredentials(username: "root", password: "pw"), tls: .system, wire: wire, limits: limits)
    }

    @Test func decodersRefuseNestingBeyondTheLimit() throws {
        // At the limit: fine. One deeper: a ReplyLimitError naming the limit, not a stack overflow.
        let atLimit = String(repeating: "[", count: wireMaxNesting) + String(repeating: "]", count: wireMaxNesting)
        #expect(throws: Never.self) { try JSON.parse(Array(atLimit.utf8)) }
        let deep = Array((String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)).utf8)
        #expect(throws: ReplyLimitError(.nestingTooDeep, limit: 64, context: "JSON, byte 64")) { try JSON.parse(deep) }
        let objects = Array(String(repeating: "{\"a\":", count: 5_000).utf8)
        #expect { try JSON.parse(objects) } throws: { ($0 as? ReplyLimitError)?.code == .nestingTooDeep }

        // The envelope struct is one level, so Value may nest 63 arrays.
        #expect(throws: Never.self) { try XMLRPC.parseResponse(Self.nestedXML(wireMaxNesting - 1)) }
        #expect { try XMLRPC.parseResponse(Self.nestedXML(5_000)) } throws: { error in
            guard let e = error as? ReplyLimitError else { return false }
            return e.code == .nestingTooDeep && e.limit == 64 && e.description.contains("64 levels")
        }
    }

    /// Found by FuzzJSONRPC: a high surrogate followed by a `\\u` escape that is not a low
    /// surrogate trapped (arithmetic overflow) and killed haven. A lone surrogate is U+FFFD and the
    /// next escape stands on its own.
    @Test func aHighSurrogateWithoutItsLowHalfIsReplacedNotATrap() throws {
        #expect(try JSON.parse(Array(#""\ud83d\ud300""#.utf8)) == .string("\u{FFFD}\u{D300}"))
        #expect(try JSON.parse(Array(#""\ud83d\u0041x""#.utf8)) == .string("\u{FFFD}Ax"))
        #expect(try JSON.parse(Array(#""\ud83d\ude08""#.utf8)) == .string("😈"))
        let reply = Array(#"{"jsonrpc":"2.0","result":["\u00e9\ud83d\ud300"],"id":1}"#.utf8)
        #expect(throws: Never.self) { try JSONRPC.parseResponse(reply) }
    }

    @Test func deeplyNestedXMLRPCReplyIsRefused() async throws {
        let server = try HostileServer(.reply(contentType: "text/xml", body: Self.nestedXML(5_000)))
        let client = Self.client(server, wire: .xmlrpc)
        await #expect { try await client.login() } throws: { ($0 as? ReplyLimitError)?.code == .nestingTooDeep }
    }

    @Test func deeplyNestedJSONReplyIsRefusedWithoutFallingBack() async throws {
        let body = Array((String(repeating: "[", count: 10_000)).utf8)
        let server = try HostileServer(.reply(contentType: "application/json", body: body))
        let client = Self.client(server, wire: .jsonrpc)
        await #expect { try await client.login() } throws: { ($0 as? ReplyLimitError)?.code == .nestingTooDeep }
        // A hostile reply is no reason to try the other protocol.
        #expect(await client.wire == .jsonrpc)
        #expect(server.requests.load(ordering: .relaxed) == 1)
    }

    @Test func anOversizedReplyIsRefusedWhileItArrives() async throws {
        // 4 GiB announced and streamed; the client holds at most its limit and hangs up.
        let server = try HostileServer(.stream(total: 4 << 30, fill: UInt8(ascii: " ")))
        let client = Self.client(server, wire: .jsonrpc, limits: XenAPILimits(maxReplyBytes: 1 << 20))
        await #expect { try await client.login() } throws: { error in
            guard let e = error as? ReplyLimitError else { return false }
            return e.code == .replyTooLarge && e.limit == 1 << 20
        }
        // Socket buffers hold a few MiB at most: the transfer stopped long before the end.
        #expect(server.bytesSent.load(ordering: .relaxed) < 256 << 20)
        server.stop()
    }

    @Test func theDefaultReplyLimitIs512MiB() {
        #expect(XenAPILimits().maxReplyBytes == 512 << 20)
        #expect(XenAPILimits().connectTimeout == 10)
    }

    @Test func aServerThatNeverAnswersTimesOut() async throws {
        let server = try HostileServer(.silent)
        let client = Self.client(server, wire: .jsonrpc, limits: XenAPILimits(replyTimeout: 0.5))
        await #expect { try await client.login() } throws: { ($0 as? HTTPTransportError)?.isTimeout == true }
        server.stop()
    }

    @Test func aSilentDataStreamFailsOnTheLowSpeedLimit() throws {
        // A stream has no overall timeout (it may take hours) but may not fall silent.
        let server = try HostileServer(.silent)
        let http = HTTPClient(tls: .system, stallTimeout: 1)
        #expect {
            _ = try http.perform(HTTPRequest(method: .get, url: server.url + "/export_raw_vdi", timeout: nil)) { _ in }
        } throws: { ($0 as? HTTPTransportError)?.isTimeout == true }
        server.stop()
    }

    @Test func anEmptyPasswordIsNeverSent() async throws {
        let server = try HostileServer(.reply(contentType: "application/json", body: Array("{\"result\":\"OpaqueRef:x\",\"id\":1}".utf8)))
        let client = XenAPIClient(url: server.url, credentials: XenCredentials(username: "root", password: ""), tls: .system)
        await #expect { try await client.login() } throws: { ($0 as? XenCredentialsError)?.code == .emptyPassword }
        #expect(server.requests.load(ordering: .relaxed) == 0)
    }
}
