import MemhaulDigest
import MemhaulImage
import MemhaulWire

/// The receiver's side of the incremental proof (capability `ledgerDigest`):
/// a ``PageLedger`` of the committed image, kept as pages are stored. A
/// round's changes are staged and applied when it commits, so a round that
/// never commits leaves no trace. A session that reopens an image (a resume,
/// a restarted receiver) rebuilds it from the image first: O(image), at
/// resume time, never in the frozen window.
final class ReceiverLedger {
    let ledger: PageLedger
    /// The open round's layout, sorted.
    private var layout: [Range<UInt64>] = []

    /// At most one entry per page the image may hold (`--max-image-bytes`),
    /// else 2^26 pages (256 GiB of content, about 1.1 GiB of ledger if dense, 6 GiB if scattered).
    init(limits: ReceiverLimits) {
        let pages = limits.maxImageBytes > 0 ? Int(min(limits.maxImageBytes / 4096 + 1, 1 << 40)) : 1 << 26
        ledger = PageLedger(maxPages: pages)
    }

    /// Rebuilds the ledger from the committed image (a reopened image).
    func rebuild(from store: ImageStore, isCancelled: () -> Bool) throws {
        _ = try store.computeDigest(version: .v3, recording: ledger, isCancelled: isCancelled)
    }

    func beginRound(layout regions: [ImageRegion]) {
        layout = regions.map { $0.start..<$0.end }.sorted { $0.lowerBound < $1.lowerBound }
        ledger.beginRound()
        ledger.restrict(to: layout)
    }

    /// Pages stored at `address`.
    func wrote(at address: UInt64, _ bytes: UnsafeRawBufferPointer) throws {
        do {
            try ledger.record(address: address, pages: bytes)
        } catch {
            throw ReceiverSession.Refusal(code: .limitExceeded, description: "limit exceeded: \(error) (--max-image-bytes)")
        }
    }

    /// ZERO_RANGES or DISCARD_RANGES: the runs read as zeros.
    func cleared(_ runs: [PageRun]) {
        let page = UInt64(WireLimits.default.pageSize)
        for run in runs { ledger.clear(run.start..<(run.start &+ UInt64(run.pageCount) * page)) }
    }

    /// The image committed the round.
    func commitRound() throws {
        do {
            try ledger.commitRound()
        } catch {
            throw ReceiverSession.Refusal(code: .limitExceeded, description: "limit exceeded: \(error) (--max-image-bytes)")
        }
    }

    func abortRound() { ledger.abortRound() }

    /// The verification round (no pages, its layout staged): the ledger digest over its layout.
    func finalDigest() throws -> MemoryDigest {
        try commitRound()
        return ledger.digest(layout: layout)
    }
}
