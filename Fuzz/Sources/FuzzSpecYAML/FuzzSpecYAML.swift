import HavenSpec

/// The YAML spec loader on any text: parse, validate, diagnose; never crash or hang.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let result = SpecLoader.load(sources: [.init(path: "fuzz/haven.yaml", text: text)])
    // Rendering every diagnostic walks the positions and snippets too.
    for d in result.diagnostics { _ = d.description }
    return 0
}
