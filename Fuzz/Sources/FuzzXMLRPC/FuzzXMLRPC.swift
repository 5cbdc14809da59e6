import FuzzDriver
import Foundation
import XenAPI

/// XML-RPC from a pool (a response) or to the simulator (a request): decode; what decodes is
/// encoded and decoded again.
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
    if let outcome = try? XMLRPC.parseResponse(bytes) {
        _ = try? XMLRPC.parseResponse(XMLRPC.response(outcome))
    }
    if let (method, params) = try? XMLRPC.parseRequest(bytes) {
        _ = try? XMLRPC.parseRequest(XMLRPC.request(method: method, params: params))
    }
    _ = try? XMLRPC.parseValue(String(decoding: bytes, as: UTF8.self))
    return 0
}
