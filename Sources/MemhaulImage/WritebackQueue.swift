#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import MemhaulSystem
import Synchronization

/// Starts writeback of a round's in-place writes (`sync_file_range` WRITE,
/// ``ImageFile/startWriteback(from:count:)``) on a thread of its own, so the
/// writer's thread does not pay for ext4's delayed block allocation and bio
/// submission: on the root disk that was half the receiver's storage-stage CPU
/// (perf, BENCHMARKS.md "Receiver write-once and pipeline").
///
/// Bounded: at most `maxPending` ranges queued or running; `start` waits for
/// a free place (the writer is then as slow as writeback, as it was inline).
/// Best effort, as inline: a failed call is only counted (the commit's fsync
/// writes the bytes and reports the error). ``finish()`` waits for every range
/// started so far, so the commit's fsync never races one, and the count it
/// returns belongs to the round being committed.
///
/// Skipped where the image directory's file system keeps pages in memory only
/// (tmpfs, ramfs: ``WritebackDecision``): there is no writeback to start, and
/// the hand-off per 4 MiB is all the queue would add.
final class WritebackQueue: @unchecked Sendable {  // unchecked: ImageFile is only used for its descriptor, kept alive by the block
    static let maxPending = 8

    /// Whether ``start(_:from:count:)`` does anything, decided once from the image directory.
    let decision: WritebackDecision

    init(directory: String) {
        decision = WritebackDecision(directory: directory)
    }

    private let queue = DispatchQueue(label: "memhaul.image.writeback", qos: .userInitiated)
    private let places = DispatchSemaphore(value: WritebackQueue.maxPending)
    private let pending = DispatchGroup()
    private let failures = Mutex(0)

    /// Queues writeback of `count` bytes of `file` from `offset` (waiting while
    /// `maxPending` are queued). The caller's injected faults apply to the call.
    func start(_ file: ImageFile, from offset: UInt64, count: UInt64) {
        guard decision.startsWriteback else { return }
        places.wait()
        pending.enter()
        let faults = Syscall.currentFaults
        let job = Job(file: file, offset: offset, count: count)
        queue.async { [self] in
#if DEBUG
            threadsUsed.withLock { _ = $0.insert(pthread_self()) }
#endif
            Syscall.withFaults(faults) {
                if job.file.startWriteback(from: job.offset, count: job.count) != nil { failures.withLock { $0 += 1 } }
            }
            places.signal()
            pending.leave()
        }
    }

    /// Waits until every queued range has been started; returns the calls that
    /// failed since the last `finish()`.
    func finish() -> Int {
        pending.wait()
        return failures.withLock { f in
            defer { f = 0 }
            return f
        }
    }

#if DEBUG
    /// Tests: the threads the calls ran on (`pthread_self`).
    let threadsUsed = Mutex<Set<pthread_t>>([])
#endif

    private struct Job: @unchecked Sendable {  // the file is touched on the queue only, for one call
        let file: ImageFile
        let offset: UInt64
        let count: UInt64
    }
}

/// Whether an image's in-place writes have their writeback started during the
/// round (``WritebackQueue``), from the file system of its directory (`statfs`).
public enum WritebackDecision: Hashable, Sendable, CustomStringConvertible {
    /// A file system with a device behind it: writeback is started every 4 MiB.
    case queued(FileSystemType)
    /// tmpfs or ramfs: no writeback exists, so none is started.
    case skipped(FileSystemType)
    /// `statfs` failed: queued, as on a disk (the queue costs a hand-off, never a byte).
    case queuedUnknown(SystemError)

    init(directory: String) {
        do {
            let type = try FileSystemType.of(directory)
            self = type.isMemoryOnly ? .skipped(type) : .queued(type)
        } catch {
            self = .queuedUnknown(error)
        }
    }

    public var startsWriteback: Bool {
        if case .skipped = self { return false }
        return true
    }

    public var description: String {
        switch self {
        case .queued(let type): "writeback queued (file system \(type))"
        case .skipped(let type): "writeback skipped (\(type) keeps pages in memory only)"
        case .queuedUnknown(let error): "writeback queued (\(error))"
        }
    }
}

extension ImageStore {
    /// What the image's file system made of the in-place writeback (the receiver logs it).
    public var writebackDecision: WritebackDecision { writeback.decision }
}
