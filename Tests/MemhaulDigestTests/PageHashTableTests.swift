import Testing
@testable import MemhaulDigest

/// The ledger's packed table against a plain dictionary, on random sets,
/// range removals (inside one block, across blocks, unaligned ends) and
/// predicate removals over addresses that cluster in a few blocks.
@Suite struct PageHashTableTests {
    @Test func matchesADictionaryModel() {
        var table = PageHashTable()
        var model: [UInt64: LedgerSum] = [:]
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {  // xorshift64
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return state
        }
        func page() -> UInt64 { (next() % 1024) << 12 }  // 16 blocks of 64 pages
        func total(_ sums: some Sequence<LedgerSum>) -> LedgerSum { sums.reduce(into: LedgerSum()) { $0 += $1 } }
        for step in 0..<20_000 {
            switch next() % 10 {
            case 0..<6:
                let a = page(), h = LedgerSum(high: next(), low: next())
                let (old, stored) = table.update(h, at: a, allowNew: true)
                #expect(stored)
                #expect(old == model.updateValue(h, forKey: a))
            case 6:
                let a = page()
                let (old, stored) = table.update(LedgerSum(low: 1), at: a, allowNew: false)
                #expect(stored == (model[a] != nil))
                if stored { #expect(old == model.updateValue(LedgerSum(low: 1), forKey: a)) }
            case 7, 8:
                let lo = page() + (next() % 2) * 100, hi = lo + (next() % 200) << 12 + (next() % 2) * 7
                let removed = table.remove(lo..<hi)
                let doomed = model.filter { (lo..<hi).contains($0.key) }
                for a in doomed.keys { model[a] = nil }
                #expect(removed.pages == doomed.count)
                #expect(removed.sum == total(doomed.values))
            default:
                let modulus = next() % 5 + 2
                let removed = table.removeAll { ($0 >> 12) % modulus == 0 }
                let doomed = model.filter { ($0.key >> 12) % modulus == 0 }
                for a in doomed.keys { model[a] = nil }
                #expect(removed == total(doomed.values))
            }
            #expect(table.count == model.count, "step \(step)")
        }
        // What is left is exactly the model: removing everything gives its sum.
        #expect(table.remove(0..<UInt64(1) << 40).sum == total(model.values))
        #expect(table.isEmpty)
    }
}
