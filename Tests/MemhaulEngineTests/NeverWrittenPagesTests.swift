import Foundation
import Testing
@testable import MemhaulSender
import MemhaulTestSupport

/// Pages the target never wrote cost nothing on the wire: a pre-copy round
/// sends no zero-page records for them, even where the kernel's fast
/// written-page scan reports them (a range mostly written: its page-table
/// holes and the empty entries of a table made after the protection). The
/// round's populated walk (the discard check) is what drops them: a round
/// without it sent all 6,144 never-written pages here as zero pages.
@Suite(.serialized) struct NeverWrittenPagesTests {
    /// (round, zero pages) of the sender's line `round N [...]: P pages (Z zero, D discarded) …`.
    static func roundZeroPages(_ line: String) -> (round: Int, zero: Int)? {
        guard line.hasPrefix("round "), let open = line.firstIndex(of: "("), let zeroWord = line.range(of: " zero,") else { return nil }
        let round = Int(line.dropFirst(6).prefix { $0.isNumber })
        let zero = Int(line[line.index(after: open)..<zeroWord.lowerBound])
        guard let round, let zero else { return nil }
        return (round, zero)
    }

    @Test func pagesNeverWrittenAreNotSentAsZeroPages() throws {
        var region: UInt64 = 0
        // 64 MiB mapped, its first 40 MiB written before the attach: the
        // written part is most of the region, so the round's written-page scan
        // takes the kernel's fast path over all of it.
        let live = try LiveMigration(id: "never-written", workload: ["--size", "4M", "--thp", "off"]) { before in
            let answer = try before.command("map 64M")
            guard let s = answer["start"] as? String, let v = UInt64(s.dropFirst(2), radix: 16) else {
                throw TestSetupError("map: no start in \(answer)")
            }
            region = v
            try before.command("write 0x\(String(region, radix: 16)) 10240")
        }
        defer { live.end() }
        try live.waitRounds(2)
        // One page in each of four 2 MiB page tables that did not exist when
        // the region was protected.
        for mib: UInt64 in [48, 52, 56, 60] {
            try live.command("write 0x\(String(region + (mib << 20), radix: 16)) 1")
        }
        try live.waitRounds(2)
        // Round 0 sends the workload's own zero pages; after it only the pages above change.
        let later = live.logLines.compactMap(Self.roundZeroPages).filter { $0.round >= 1 }
        #expect(later.count >= 3)
        #expect(later.allSatisfy { $0.zero == 0 }, "zero pages sent after round 0: \(later)")
        let store = try live.finish()
        defer { store.close() }
        try live.verify(store)
    }
}
