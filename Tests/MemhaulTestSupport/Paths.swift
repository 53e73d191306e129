import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Shared by the test targets: where the built binaries are, scratch
/// directories, and the error a test's own setup throws.

/// The repository root, from this file's path (Tests/MemhaulTestSupport/Paths.swift).
public let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// A built executable (`memhaul`, `memhaul-workload`): in `$MEMHAUL_BIN_DIR`
/// (set by scripts/test, a release directory for e2e) or else `.build/debug`.
public func builtBinary(_ name: String) -> String {
    let dir = ProcessInfo.processInfo.environment["MEMHAUL_BIN_DIR"] ?? repositoryRoot + "/.build/debug"
    return dir + "/" + name
}

/// A new, empty directory `<parent>/memhaul-<tag>-XXXXXX`, `/tmp` unless told
/// (mkdtemp: unique even when tests run in parallel or in several processes at
/// once). It is removed when the test process exits (set `MEMHAUL_KEEP_TEST_DIRS=1`
/// to keep them for a post-mortem): images of hundreds of MiB per test filled the disk otherwise.
public func temporaryDirectory(_ tag: String = "test", in parent: String = "/tmp") -> String {
    var template = Array("\(parent)/memhaul-\(tag)-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { buffer in
        guard let path = mkdtemp(buffer.baseAddress!) else { fatalError("mkdtemp \(parent)/memhaul-\(tag)-XXXXXX: errno \(errno)") }
        return String(cString: path)
    }
    ScratchDirectories.shared.add(path)
    return path
}

/// The scratch directories this process made, removed at exit.
final class ScratchDirectories: @unchecked Sendable {
    static let shared = ScratchDirectories()
    private let lock = NSLock()
    private var paths: [String] = []

    private init() {
        if ProcessInfo.processInfo.environment["MEMHAUL_KEEP_TEST_DIRS"] == nil {
            atexit { ScratchDirectories.shared.removeAll() }
        }
    }

    func add(_ path: String) { lock.withLock { paths.append(path) } }

    private func removeAll() {
        for path in lock.withLock({ paths }) { removeTree(path) }
    }
}

/// Removes a directory tree, ignoring errors (cleanup).
public func removeTree(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

/// A test's own setup failed (a child died, a file is missing): not the code under test.
public struct TestSetupError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
