#if DEBUG
#if canImport(Glibc)
import Glibc
#endif
/// Crash points for the store's tests (debug builds only: a release store has
/// no way to skip an apply or stop at the commit point).
struct TestHooks {
    /// Stop right after the commit point, leaving the journal unapplied (the
    /// state a crash there leaves).
    var stopAfterPublish = false
    /// Never apply journals to the region files, as if no apply had reached
    /// the disk before a crash (only fsynced in-place writes did).
    var skipApply = false
    /// The last background apply, held weakly: a test checks it is freed once joined.
    weak var lastApply: ApplyJob?
}

extension ImageStore {
    /// Tests: stop right after the commit point, leaving the journal unapplied.
    var testStopAfterPublish: Bool {
        get { hooks.stopAfterPublish }
        set { hooks.stopAfterPublish = newValue }
    }

    /// Tests: never apply journals to the region files.
    var testSkipApply: Bool {
        get { hooks.skipApply }
        set { hooks.skipApply = newValue }
    }

    /// Tests: whether the last background apply is still alive (it must not outlive its join).
    var testLastApplyIsAlive: Bool { hooks.lastApply != nil }

    /// Tests: the threads the in-place writeback ran on.
    var testWritebackThreads: Set<pthread_t> { writeback.threadsUsed.withLock { $0 } }

    /// Tests: drop the store as a crash would: no checkpoint, journals left for `open`.
    func testCrash() {
        poisonForTest("crashed (test)")
        close()
    }

    /// Tests: leave the open round's journal on disk as a crash before the commit would.
    func testStopBeforeCommit() {
        dropOpenRoundForTest()
    }
}
#endif
