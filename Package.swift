// swift-tools-version: 6.0
import PackageDescription

// One settings array for every target: Swift 6 language mode comes with tools 6.0;
// `ExistentialAny` keeps the cost of existentials visible.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "haven",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "haven", targets: ["HavenCLI"]),
        .executable(name: "haven-bench", targets: ["HavenBench"]),
        .library(name: "HavenSpec", targets: ["HavenSpec"]),
        .library(name: "XenAPI", targets: ["XenAPI"]),
        .library(name: "HavenData", targets: ["HavenData"]),
        .library(name: "HavenMover", targets: ["HavenMover"]),
        // For the fuzz targets in Fuzz/ (a package of their own).
        .library(name: "DiskFormats", targets: ["DiskFormats"]),
    ],
    dependencies: [
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // Test instrumentation: numbered durable steps where `HAVEN_CRASH_AT` kills the process.
        .target(name: "CrashPoints", swiftSettings: swiftSettings),
        // Pure: YAML desired state -> typed, validated model. No sockets, no pool.
        .target(
            name: "HavenSpec",
            dependencies: [.product(name: "Yams", package: "Yams")],
            swiftSettings: swiftSettings
        ),
        // libcurl's variadic setters and an in-handshake certificate pin (OpenSSL).
        .target(
            name: "CCurl",
            linkerSettings: [.linkedLibrary("curl"), .linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        // OpenSSL for the simulator's HTTPS server.
        .target(
            name: "CSSL",
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        // XenAPI client: wire formats, libcurl transport, sessions, typed records and calls.
        .target(
            name: "XenAPI",
            dependencies: ["CCurl", "CrashPoints"],
            swiftSettings: swiftSettings
        ),
        // Pure codecs of the disk and archive formats xapi speaks: VHD, tar (XVA), XXH64.
        .target(
            name: "DiskFormats",
            swiftSettings: swiftSettings
        ),
        // `haven mover`, the program inside a data-mover appliance, and haven's client of it:
        // a framed protocol over TLS (OpenSSL through CSSL), pinned certificates, job tokens.
        .target(
            name: "HavenMover",
            dependencies: ["CSSL", "CHavenSystem", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings
        ),
        // The simulated pool (`haven sim`): xapi's object model, RPC, HTTP data paths, CBT, NBD via nbdkit.
        .target(
            name: "HavenSim",
            dependencies: ["XenAPI", "DiskFormats", "CSSL", "HavenMover", .product(name: "Yams", package: "Yams")],
            swiftSettings: swiftSettings
        ),
        .target(name: "CNBD", linkerSettings: [.linkedLibrary("nbd")]),
        .target(name: "CHavenSystem"),
        .target(name: "CZstd", linkerSettings: [.linkedLibrary("zstd")]),
        // The data plane: NBD reading (libnbd), the chunk repository, backup, restore, verify, GC.
        .target(
            name: "HavenData",
            dependencies: ["CNBD", "CZstd", "CHavenSystem", "CrashPoints", "DiskFormats", "XenAPI", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings
        ),
        // The planner: (desired state, observed pools, catalog, now) -> plan. Pure.
        .target(
            name: "HavenCore",
            dependencies: ["HavenSpec"],
            swiftSettings: swiftSettings
        ),
        // The catalog: SQLite through GRDB (backups, anchors, inventory of owned objects).
        .target(
            name: "HavenCatalog",
            dependencies: ["HavenCore", "CrashPoints", .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: swiftSettings
        ),
        // The engine: observes pools, executes plans (XenAPI, data plane, catalog), restores VMs.
        .target(
            name: "HavenEngine",
            dependencies: ["HavenSpec", "HavenCore", "HavenCatalog", "HavenData", "HavenMover", "CrashPoints", "XenAPI", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // The long-running service: config watcher, reconcile loop, pool event watchers, HTTP
        // (/healthz, /readyz, /metrics, status page) in one ServiceGroup. Wiring around Engine.reconcile.
        .target(
            name: "HavenDaemon",
            dependencies: [
                "HavenSpec",
                "HavenCore",
                "HavenCatalog",
                "HavenEngine",
                "XenAPI",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Wiring only: parses arguments, calls the libraries, maps results to exit codes.
        .executableTarget(
            name: "HavenCLI",
            dependencies: [
                "HavenSpec",
                "XenAPI",
                "HavenSim",
                "HavenData",
                "HavenCore",
                "HavenCatalog",
                "HavenEngine",
                "HavenDaemon",
                "HavenMover",
                "CHavenSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "HavenBench",
            dependencies: ["HavenSpec", "HavenCore", "XenAPI", "HavenSim", "HavenData", "DiskFormats"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HavenSpecTests",
            dependencies: ["HavenSpec"],
            exclude: ["Fixtures"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HavenCoreTests",
            dependencies: ["HavenCore", "HavenSpec"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "XenAPITests",
            dependencies: ["XenAPI"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HavenDataTests",
            dependencies: ["HavenData", "DiskFormats"],
            swiftSettings: swiftSettings
        ),
        // The mover protocol through real TLS on loopback (127.40-59).
        .testTarget(
            name: "HavenMoverTests",
            dependencies: ["HavenMover"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HavenSimTests",
            dependencies: ["HavenSim", "HavenMover", "XenAPI", "DiskFormats"],
            swiftSettings: swiftSettings
        ),
        // Runners and the scheduler against an in-process `haven sim` (real nbdkit).
        .testTarget(
            name: "HavenEngineTests",
            dependencies: ["HavenEngine", "HavenCore", "HavenSpec", "HavenCatalog", "HavenSim", "HavenMover", "XenAPI"],
            swiftSettings: swiftSettings
        ),
        // The daemon's pieces in process: config reload, schedule, metrics text, status page.
        .testTarget(
            name: "HavenDaemonTests",
            dependencies: ["HavenDaemon", "HavenSpec", "HavenCore", "HavenCatalog", "HavenEngine", "HavenSim", "XenAPI"],
            swiftSettings: swiftSettings
        ),
        // Drives the built `haven` binary end to end.
        .testTarget(
            name: "HavenCLITests",
            dependencies: ["XenAPI", "DiskFormats"],
            exclude: ["Referee"],
            swiftSettings: swiftSettings
        ),
    ]
)
