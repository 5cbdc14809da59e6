import FuzzDriver
import Foundation
import HavenSpec

/// The YAML spec loader on any text: parse, validate, diagnose; never crash or hang.
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
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let result = SpecLoader.load(sources: [.init(path: "fuzz/haven.yaml", text: text)])
    // Rendering every diagnostic walks the positions and snippets too.
    for d in result.diagnostics { _ = d.description }
    return 0
}
