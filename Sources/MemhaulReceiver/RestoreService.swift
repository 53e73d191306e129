#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulWire

/// What the receiver does with a complete image and the CRIU files the
/// sender shipped (`memhaul receive --restore criu`): the agent is given one;
/// without it the receiver does not offer capability `criu-restore`.
public struct RestoreService: Sendable {
    /// A restore to run: the files are in `criuDirectory`, the memory in the image.
    public struct Job: Sendable {
        public var migrationID: String
        public var imageDirectory: String
        public var criuDirectory: String
        public var options: RestoreBegin.Options
    }

    /// A process running on this host.
    public struct Outcome: Sendable {
        public var pid: Int32
        /// RESTORE_BEGIN → the process SIGCONTed.
        public var restoreSeconds: Double
        /// RESTORE_BEGIN → every page of the image in the process.
        public var completeSeconds: Double
        public init(pid: Int32, restoreSeconds: Double, completeSeconds: Double) {
            self.pid = pid
            self.restoreSeconds = restoreSeconds
            self.completeSeconds = completeSeconds
        }
    }

    /// What the receiver offers in WELCOME for it.
    public static let capabilities: Capabilities = [.criuRestore, .criuParentRoute]

    /// Most files and bytes one restore may ship.
    public var maxFiles: Int
    public var maxTotalBytes: UInt64
    /// Restores, resumes (SIGCONT) and waits until the process has all its
    /// memory; throws (having killed whatever it restored) if it cannot.
    public var restore: @Sendable (Job) throws -> Outcome
    /// Once the final round is committed, read the image's region files into
    /// the page cache while the sender dumps (``ImageReadahead``): the restore
    /// then does not pay a cold read of the image.
    public var readsAhead: Bool

    public init(maxFiles: Int = 1024, maxTotalBytes: UInt64 = 256 << 20, readsAhead: Bool = true,
                restore: @escaping @Sendable (Job) throws -> Outcome) {
        self.maxFiles = maxFiles
        self.maxTotalBytes = maxTotalBytes
        self.readsAhead = readsAhead
        self.restore = restore
    }
}

/// Writes the RESTORE_FILE chunks of one restore into one flat directory:
/// names by the wire rule (no `/`, no leading `.`), each file written in
/// order from offset 0 (no holes, no overwrite), within the file and byte
/// limits. Files are created 0600, O_EXCL|O_NOFOLLOW.
final class RestoreFileWriter {
    let directory: String
    private let maxFiles: Int
    private let maxTotalBytes: UInt64
    private(set) var sizes: [String: UInt64] = [:]
    private(set) var totalBytes: UInt64 = 0
    private var current: (name: String, fd: Int32)?

    init(directory: String, maxFiles: Int, maxTotalBytes: UInt64) throws {
        self.directory = directory
        self.maxFiles = maxFiles
        self.maxTotalBytes = maxTotalBytes
        try? FileManager.default.removeItem(atPath: directory)  // a failed earlier attempt's files
        guard mkdir(directory, 0o700) == 0 else {
            throw ReceiverSession.Refusal(code: .storageFailure, description: "cannot create \(directory): \(String(cString: strerror(errno)))")
        }
    }

    deinit { closeCurrent() }

    private func refuse(_ m: String) -> ReceiverSession.Refusal { .init(code: .restoreFailed, description: m) }

    func write(_ chunk: RestoreFile) throws {
        let name = chunk.name
        guard RestoreFileName.isValid(name.utf8) else { throw refuse("restore file name \(name.prefix(40)) is not \(RestoreFileName.rule)") }
        let size = sizes[name]
        if size == nil, sizes.count >= maxFiles { throw refuse("more than \(maxFiles) restore files") }
        guard chunk.offset == (size ?? 0) else {
            throw refuse("restore file \(name): chunk at offset \(chunk.offset), expected \(size ?? 0) (files are sent in order)")
        }
        let (sum, overflow) = totalBytes.addingReportingOverflow(UInt64(chunk.data.count))
        guard !overflow, sum <= maxTotalBytes else { throw refuse("restore files exceed \(maxTotalBytes) bytes") }
        if current?.name != name {
            closeCurrent()
            let flags = O_WRONLY | O_CLOEXEC | O_NOFOLLOW | (size == nil ? O_CREAT | O_EXCL : O_APPEND)
            let fd = open(directory + "/" + name, flags, 0o600)
            guard fd >= 0 else {
                throw ReceiverSession.Refusal(code: .storageFailure, description: "cannot create \(directory)/\(name): \(String(cString: strerror(errno)))")
            }
            current = (name, fd)
        }
        try chunk.data.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = Glibc.write(current!.fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    throw ReceiverSession.Refusal(code: .storageFailure, description: "writing \(directory)/\(name): \(String(cString: strerror(errno)))")
                }
                done += n
            }
        }
        sizes[name] = (size ?? 0) + UInt64(chunk.data.count)
        totalBytes = sum
    }

    /// RESTORE_BEGIN must count what arrived.
    func finish(_ begin: RestoreBegin) throws {
        closeCurrent()
        guard Int(begin.fileCount) == sizes.count, begin.totalBytes == totalBytes else {
            throw refuse("RESTORE_BEGIN announces \(begin.fileCount) files / \(begin.totalBytes) bytes, received \(sizes.count) / \(totalBytes)")
        }
    }

    private func closeCurrent() {
        if let c = current { close(c.fd) }
        current = nil
    }
}
