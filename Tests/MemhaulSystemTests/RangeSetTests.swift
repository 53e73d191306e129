import MemhaulSystem
import Testing

@Suite struct RangeSetTests {
    private func pieces(_ list: [AddressRange], _ start: UInt64, _ end: UInt64) -> [String] {
        var out: [String] = []
        list.forEachPiece(of: start, end) { a, b, inside in out.append("\(a)-\(b)\(inside ? "+" : "")") }
        return out
    }

    @Test func piecesSplitAtEveryBoundaryAndSayWhichAreInside() {
        let list = [AddressRange(start: 10, end: 20), AddressRange(start: 30, end: 40)]
        #expect(pieces(list, 0, 50) == ["0-10", "10-20+", "20-30", "30-40+", "40-50"])
        #expect(pieces(list, 15, 35) == ["15-20+", "20-30", "30-35+"])
        #expect(pieces(list, 20, 30) == ["20-30"])
        #expect(pieces(list, 32, 38) == ["32-38+"])
        #expect(pieces([], 5, 9) == ["5-9"])
        #expect(pieces(list, 7, 7).isEmpty)
    }
}
