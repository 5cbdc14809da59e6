import XenAPI

/// JSON-RPC from a pool (a response) or to the simulator (a request), and the JSON parser under
/// both: decode; what decodes is encoded and decoded again.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let value = try? JSON.parse(bytes) {
        _ = try? JSON.parse(JSON.encode(value))
    }
    if let outcome = try? JSONRPC.parseResponse(bytes) {
        _ = try? JSONRPC.parseResponse(JSONRPC.response(outcome, id: 1, version2: true))
        _ = try? JSONRPC.parseResponse(JSONRPC.response(outcome, id: "x", version2: false))
    }
    _ = try? JSONRPC.parseRequest(bytes)
    return 0
}
