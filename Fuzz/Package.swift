// swift-tools-version:6.0
// libFuzzer harnesses. Build only with the fuzzer sanitizer (it provides main):
//   swift build -c release --package-path Fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
// Fuzz/run does that and runs them.
//   WireFuzz      the MemhaulWire codec (decoders, canonical re-encoding, the incremental decoder)
//   ReceiverFuzz  a real ReceiverSession + ImageStore fed a hostile sender's byte streams
import PackageDescription

let package = Package(
    name: "memhaul-fuzz",
    dependencies: [.package(name: "memhaul", path: "..")],
    targets: [
        .executableTarget(
            name: "WireFuzz",
            dependencies: ["WireFuzzMain", .product(name: "MemhaulWire", package: "memhaul")]
        ),
        .executableTarget(
            name: "ReceiverFuzz",
            dependencies: [
                "ReceiverFuzzMain", .product(name: "MemhaulWire", package: "memhaul"),
                .product(name: "MemhaulReceiverLibrary", package: "memhaul"),
            ]
        ),
        // C: <Target>_main -> LLVMFuzzerRunDriver (SwiftPM renames main; see the .c files).
        .target(name: "WireFuzzMain"),
        .target(name: "ReceiverFuzzMain"),
    ]
)
