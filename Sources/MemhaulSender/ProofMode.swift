import MemhaulDigest
import MemhaulKernel
import MemhaulSession
import MemhaulSystem
import MemhaulWire

/// Which proof ends a migration (`--proof`, README "What the proof proves").
///
/// - `incremental`: the ledger digest (v3, capability `ledgerDigest`). Both
///   sides hashed each page as it was sent and committed; at cutover only the
///   sums are compared, O(regions). Proves the image holds exactly what the
///   sender read, not that what it read equals the frozen source: a page the
///   tracking missed passes it.
/// - `full`: today's proof, v2. The sender re-reads all frozen memory, the
///   receiver re-reads the whole image; O(memory) on each side, one after the
///   other, inside the frozen window. Proves image == frozen source.
/// - `both`: the sender re-reads the frozen memory (v3) and compares it with
///   its ledger before the incremental exchange: image-as-committed == frozen
///   source, at half the cost of `full` (the receiver does not re-read its
///   image; `memhaul image verify` does that independently).
///
/// With a receiver that does not accept `ledgerDigest`, `incremental` and
/// `both` fall back to `full` (a status warning says so).
public enum ProofMode: String, Sendable, CaseIterable, CustomStringConvertible {
    case incremental, full, both

    public var description: String { rawValue }

    /// Whether the HELLO offers `ledgerDigest`.
    var offersLedger: Bool { self != .full }

    /// Whether the sender re-reads the frozen memory when the ledger is agreed.
    var rereadsMemory: Bool { self == .both }
}

/// The sender's ledger check of the full proof: the frozen memory, re-read in
/// v3, must equal what the ledger recorded as sent.
enum LedgerCheck {
    static func check(memory: MemoryDigest, ledger: MemoryDigest) throws {
        guard memory == ledger else {
            throw MigrationError.digestMismatch(sender: "frozen memory \(memory.hex)", receiver: "pages sent \(ledger.hex) (a page changed that tracking missed)")
        }
    }
}

#if DEBUG
/// Sabotage for tests: what a tracking bug would do.
public struct SenderTestHooks: Sendable {
    /// The final (frozen) delta leaves out its first dirty page, as if the
    /// tracker had missed a write: the incremental proof cannot see it.
    public var dropFirstFinalDirtyPage = false
    public init() {}
}

extension RoundScan {
    /// This scan without its first dirty page.
    func droppingFirstDirtyPage() -> RoundScan {
        guard let first = dirty.first else { return self }
        var rest = Array(dirty.dropFirst())
        if first.pageCount > 1 { rest.insert(AddressRange(start: first.start + PageSize.bytes, end: first.end), at: 0) }
        return RoundScan(round: round, dirty: rest, discarded: discarded, stats: stats)
    }
}
#endif
