// swift-tools-version: 6.0
// libFuzzer targets of haven's decoders of hostile input. Not part of haven's own package, so
// `swift build` / `swift test` never see them; `make reliability` builds them with
//   swift build --package-path Fuzz --scratch-path .build-fuzz -c release -Xswiftc -sanitize=fuzzer,address
import Foundation
import PackageDescription

// A path dependency's identity is its directory's name (`main`, a worktree's name…).
let haven = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent.lowercased()

func fuzzer(_ name: String, _ products: [String]) -> Target {
    .executableTarget(name: name, dependencies: ["FuzzDriver"] + products.map { .product(name: $0, package: haven) })
}

let package = Package(
    name: "haven-fuzz",
    platforms: [.macOS(.v14)],
    dependencies: [.package(path: "..")],
    targets: [
        // libFuzzer's LLVMFuzzerRunDriver: SwiftPM gives each executable a main of its own, so the
        // targets call the driver from theirs instead of using libFuzzer's main.
        .target(name: "FuzzDriver"),
        fuzzer("FuzzSpecYAML", ["HavenSpec"]),
        fuzzer("FuzzXMLRPC", ["XenAPI"]),
        fuzzer("FuzzJSONRPC", ["XenAPI"]),
        fuzzer("FuzzCBTBitmap", ["HavenData"]),
        fuzzer("FuzzDiskFormats", ["DiskFormats"]),
        fuzzer("FuzzManifest", ["HavenData"]),
    ]
)
