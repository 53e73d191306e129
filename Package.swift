// swift-tools-version:6.0
// memhaul: live-migration pre-copy transport for the memory of a running Linux process.
import PackageDescription

let package = Package(
    name: "memhaul",
    products: [
        .executable(name: "memhaul", targets: ["memhaul"]),
        .executable(name: "memhaul-workload", targets: ["memhaul-workload"]),
        .library(name: "MemhaulWire", targets: ["MemhaulWire"]),
        // For the receiver fuzz harness (Fuzz/Sources/ReceiverFuzz): the session and the layers its API uses.
        .library(name: "MemhaulReceiverLibrary", targets: ["MemhaulReceiver", "MemhaulSession"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // C: the Linux uapi shim (PAGEMAP_SCAN, uffd WP_ASYNC, ptrace, pidfd, process_vm_readv).
        .target(name: "CMemhaulLinux"),
        // C: system libraries, and macro wrappers for OpenSSL.
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .target(name: "CMemhaulTLS", dependencies: ["COpenSSL"]),
        // C: blocks SIGINT/SIGTERM/SIGHUP before main (memhaul executable only; see ShutdownSignals).
        .target(name: "CMemhaulSignals"),

        // Swift layers, bottom up.
        .target(name: "MemhaulSystem"),
        .target(name: "MemhaulKernel", dependencies: ["CMemhaulLinux", "MemhaulSystem"]),
        .target(name: "MemhaulWire"),  // pure Swift, imports no C: fuzzable
        .target(name: "MemhaulCompression", dependencies: ["CZstd"]),
        .target(name: "MemhaulDigest", dependencies: ["CXXHash"]),  // the memory digest both sides prove
        .target(name: "MemhaulTLS", dependencies: ["COpenSSL", "CMemhaulTLS", "MemhaulSystem"]),
        // The migration report (`Protocol/report.md`): its schema, JSON, file, and the HTML page with SVG plots.
        .target(name: "MemhaulReport", dependencies: ["MemhaulSystem"]),
        .target(name: "MemhaulImage", dependencies: ["MemhaulWire", "MemhaulDigest", "MemhaulSystem", "CXXHash"]),  // Wire: the one migration-id rule
        // What both sides of a connection share: framing over a stream, the error type and what a lost connection is.
        .target(name: "MemhaulSession", dependencies: ["MemhaulTLS", "MemhaulWire", "MemhaulSystem"]),
        // Sender side: attach, rounds, convergence, freeze, proof. Needs the kernel layer (ptrace, PAGEMAP_SCAN).
        .target(
            name: "MemhaulSender",
            dependencies: ["MemhaulSession", "MemhaulKernel", "MemhaulWire", "MemhaulCompression", "MemhaulDigest", "MemhaulTLS", "MemhaulImage", "MemhaulReport", "MemhaulSystem"]
        ),
        // Receiver side: sessions into the image store, limits, authorisation. No kernel module.
        .target(
            name: "MemhaulReceiver",
            dependencies: ["MemhaulSession", "MemhaulWire", "MemhaulCompression", "MemhaulDigest", "MemhaulTLS", "MemhaulImage", "MemhaulReport", "MemhaulSystem"]
        ),
        // CRIU's image formats and page server: memhaul's image feeds `criu restore`. No kernel module.
        .target(name: "MemhaulCRIU", dependencies: ["MemhaulImage", "MemhaulSystem", "MemhaulTLS", "MemhaulSession", "MemhaulWire", "MemhaulSender"]),
        .target(name: "MemhaulControl", dependencies: ["MemhaulSender", "MemhaulReceiver", "MemhaulReport", "MemhaulSession", "MemhaulTLS", "MemhaulSystem"]),
        // Prometheus metrics of both agents (`--metrics-listen`): the counters as swift-metrics, a bounded HTTP listener.
        .target(
            name: "MemhaulMetrics",
            dependencies: [
                "MemhaulSender", "MemhaulReceiver", "MemhaulControl", "MemhaulImage", "MemhaulTLS", "MemhaulSystem",
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // Benchmarks (`memhaul bench`), kept out of the library modules.
        .target(name: "MemhaulBench", dependencies: ["CMemhaulLinux", "MemhaulKernel", "MemhaulCompression", "MemhaulTLS", "MemhaulImage", "MemhaulSystem"]),
        .executableTarget(
            name: "memhaul",
            dependencies: [
                "MemhaulKernel", "MemhaulWire", "MemhaulCompression", "MemhaulDigest", "MemhaulTLS", "MemhaulImage",
                "MemhaulSession", "MemhaulSender", "MemhaulReceiver", "MemhaulControl", "MemhaulMetrics", "MemhaulBench", "MemhaulCRIU", "MemhaulReport", "MemhaulSystem", "CMemhaulSignals",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The test and benchmark target process: known content, controlled writes, self-digest.
        .executableTarget(name: "memhaul-workload", dependencies: ["CMemhaulLinux", "MemhaulSystem", "MemhaulDigest"]),

        // Helpers the test targets share (child processes, the built binaries,
        // scratch directories, test certificates, streams); not a test target itself.
        .target(name: "MemhaulTestSupport", dependencies: ["CMemhaulLinux", "MemhaulSystem", "MemhaulTLS"], path: "Tests/MemhaulTestSupport"),
        .testTarget(name: "MemhaulSystemTests", dependencies: ["MemhaulSystem"]),
        .testTarget(name: "MemhaulKernelTests", dependencies: ["MemhaulTestSupport", "MemhaulKernel", "MemhaulSystem", "CMemhaulLinux"]),
        .testTarget(name: "MemhaulWireTests", dependencies: ["MemhaulWire", "MemhaulSystem"]),
        .testTarget(name: "MemhaulCompressionTests", dependencies: ["MemhaulCompression", "MemhaulBench"]),
        .testTarget(name: "MemhaulDigestTests", dependencies: ["MemhaulDigest"]),
        .testTarget(name: "MemhaulTLSTests", dependencies: ["MemhaulTestSupport", "MemhaulTLS", "MemhaulSystem"]),
        .testTarget(name: "MemhaulImageTests", dependencies: ["MemhaulTestSupport", "MemhaulImage", "MemhaulBench", "MemhaulDigest", "MemhaulSystem", "CXXHash"]),
        .testTarget(name: "MemhaulEngineTests", dependencies: ["MemhaulTestSupport", "MemhaulSession", "MemhaulSender", "MemhaulReceiver", "MemhaulControl", "MemhaulKernel", "MemhaulSystem", "MemhaulImage", "MemhaulTLS", "MemhaulWire", "MemhaulDigest", "MemhaulReport", "MemhaulCompression", "CZstd"]),
        .testTarget(name: "MemhaulCRIUTests", dependencies: ["MemhaulTestSupport", "MemhaulCRIU", "MemhaulImage", "MemhaulSystem", "MemhaulTLS"]),
        .testTarget(name: "MemhaulControlTests", dependencies: ["MemhaulControl", "MemhaulSender"]),
        .testTarget(name: "MemhaulReportTests", dependencies: ["MemhaulTestSupport", "MemhaulReport", "MemhaulSystem"]),
        .testTarget(name: "MemhaulMetricsTests", dependencies: ["MemhaulTestSupport", "MemhaulMetrics", "MemhaulSender"]),
        .testTarget(name: "MemhaulCLITests", dependencies: ["MemhaulTestSupport", "MemhaulReport", "MemhaulSystem"]),
    ]
)
