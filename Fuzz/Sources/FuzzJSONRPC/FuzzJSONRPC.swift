import FuzzDriver
import Foundation
import XenAPI

/// JSON-RPC from a pool (a response) or to the simulator (a request), and the JSON parser under
/// both: decode; what decodes is encoded and decoded again.
@main enum Main {
    static func main() {
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, fuzz))
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
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
