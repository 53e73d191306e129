// swift-tools-version:6.0
// libFuzzer harness for the MemhaulWire codec. Build only with the fuzzer sanitizer (it provides main):
//   swift build -c release --package-path Fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
// Fuzz/run does that and runs it.
import PackageDescription

let package = Package(
    name: "memhaul-fuzz",
    dependencies: [.package(name: "memhaul", path: "..")],
    targets: [
        .executableTarget(
            name: "WireFuzz",
            dependencies: ["WireFuzzMain", .product(name: "MemhaulWire", package: "memhaul")]
        ),
        // C: WireFuzz_main -> LLVMFuzzerRunDriver (SwiftPM renames main; see the .c file).
        .target(name: "WireFuzzMain"),
    ]
)
