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
        .library(name: "MemhaulReceiver", targets: ["MemhaulEngine", "MemhaulImage", "MemhaulDigest", "MemhaulCompression", "MemhaulTLS"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // C: the Linux uapi shim (PAGEMAP_SCAN, uffd WP_ASYNC, ptrace, pidfd, process_vm_readv).
        .target(name: "CMemhaulLinux"),
        // C: system libraries, and macro wrappers for OpenSSL.
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .target(name: "CMemhaulTLS", dependencies: ["COpenSSL"]),

        // Swift layers, bottom up.
        .target(name: "MemhaulSystem"),
        .target(name: "MemhaulKernel", dependencies: ["CMemhaulLinux", "MemhaulSystem"]),
        .target(name: "MemhaulWire"),  // pure Swift, imports no C: fuzzable
        .target(name: "MemhaulCompression", dependencies: ["CZstd", "MemhaulSystem"]),
        .target(name: "MemhaulDigest", dependencies: ["CXXHash"]),  // the memory digest both sides prove
        .target(name: "MemhaulTLS", dependencies: ["COpenSSL", "CMemhaulTLS", "MemhaulSystem"]),
        .target(name: "MemhaulImage", dependencies: ["MemhaulWire", "MemhaulDigest", "MemhaulSystem", "CXXHash"]),
        .target(
            name: "MemhaulEngine",
            dependencies: ["MemhaulKernel", "MemhaulWire", "MemhaulCompression", "MemhaulDigest", "MemhaulTLS", "MemhaulImage", "MemhaulSystem"]
        ),
        .target(name: "MemhaulControl", dependencies: ["MemhaulEngine", "MemhaulSystem"]),
        .executableTarget(
            name: "memhaul",
            dependencies: [
                "MemhaulKernel", "MemhaulWire", "MemhaulCompression", "MemhaulDigest", "MemhaulTLS", "MemhaulImage",
                "MemhaulEngine", "MemhaulControl", "MemhaulSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The test and benchmark target process: known content, controlled writes, self-digest.
        .executableTarget(name: "memhaul-workload", dependencies: ["CMemhaulLinux", "MemhaulSystem", "MemhaulDigest"]),

        // Helpers the test targets share (child processes, the built binaries,
        // scratch directories, test certificates, streams); not a test target itself.
        .target(name: "MemhaulTestSupport", dependencies: ["CMemhaulLinux", "MemhaulSystem", "MemhaulTLS"], path: "Tests/MemhaulTestSupport"),
        .testTarget(name: "MemhaulSystemTests", dependencies: ["MemhaulSystem", "MemhaulTestSupport"]),
        .testTarget(name: "MemhaulKernelTests", dependencies: ["MemhaulKernel", "MemhaulSystem", "CMemhaulLinux", "MemhaulTestSupport"]),
        .testTarget(name: "MemhaulWireTests", dependencies: ["MemhaulWire", "MemhaulSystem", "MemhaulTestSupport"]),
        .testTarget(name: "MemhaulCompressionTests", dependencies: ["MemhaulCompression", "MemhaulTestSupport"]),
        .testTarget(name: "MemhaulDigestTests", dependencies: ["MemhaulDigest", "MemhaulTestSupport"]),
        .testTarget(name: "MemhaulTLSTests", dependencies: ["MemhaulTLS", "MemhaulSystem", "MemhaulTestSupport"]),
        .testTarget(name: "MemhaulImageTests", dependencies: ["MemhaulImage", "MemhaulWire", "MemhaulSystem", "MemhaulTestSupport"]),
        .testTarget(name: "MemhaulEngineTests", dependencies: ["MemhaulEngine", "MemhaulControl", "MemhaulImage", "MemhaulTLS", "MemhaulWire", "MemhaulDigest", "CZstd", "MemhaulTestSupport"]),
        .testTarget(name: "MemhaulControlTests", dependencies: ["MemhaulControl", "MemhaulTestSupport"]),
        .testTarget(name: "MemhaulCLITests", dependencies: ["MemhaulSystem", "MemhaulTestSupport"]),
    ]
)
