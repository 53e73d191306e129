import MemhaulKernel
import MemhaulSystem

/// How the frozen final round finds its pages (both are exact).
public enum FinalScanMethod: String, Sendable, CaseIterable {
    /// ``DirtyTracker/frozenRound(ranges:removed:fileContent:fileBacked:)``:
    /// one fast walk for unprotected pages, the exact walk only where
    /// something changed and over file-backed mappings. The default.
    case changed
    /// ``DirtyTracker/nextRound(ranges:removed:checkDiscards:fileContent:)``
    /// with the populated walk of every page: the method before, kept as the
    /// baseline `memhaul bench migrate` measures against in the same run.
    case fullWalk = "full-walk"

    /// Scans one round with `tracker`; `frozen` selects this method, else a pre-copy round.
    func scan(
        _ tracker: DirtyTracker, frozen: Bool, ranges: [AddressRange], removed: [AddressRange], process: AttachedProcess
    ) throws -> RoundScan {
        guard frozen, self == .changed else {
            return try tracker.nextRound(ranges: ranges, removed: removed, fileContent: process.fileContentRanges)
        }
        // Any inode: a page there can turn back into the file's page without a WRITTEN trace.
        let fileBacked = process.registered.filter { $0.inode != 0 || !$0.path.isEmpty && !$0.isPseudo }.map(\.range)
        return try tracker.frozenRound(
            ranges: ranges, removed: removed, fileContent: process.fileContentRanges, fileBacked: fileBacked)
    }
}
