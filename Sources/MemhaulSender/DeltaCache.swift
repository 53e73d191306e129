import MemhaulDigest
import MemhaulSystem
import MemhaulWire
import Synchronization

/// The sender's bounded cache of the content it last sent for pages (capability `pageDelta`):
/// a re-dirtied page found here goes as a ``DeltaBatch`` delta against it.
///
/// What is cached must equal what the receiver has committed, or the receiver's checksum
/// fails the migration: pages are stored only once their frame is out (never for a batch an
/// aborted cutover did not send), zero and discarded pages are dropped, pages outside the
/// layout are dropped, and a resume drops the pages of every chunk the receiver did not commit.
///
/// Eviction is CLOCK (second chance): a hit marks its slot, the hand skips marked slots once.
/// Admission: the first, full round only fills free slots (it would otherwise churn the whole
/// memory through the cache); later rounds carry re-dirtied pages, which evict.
/// Memory: `capacityBytes` of page slots (reserved, touched as used) and a table of at most
/// `capacityBytes / 4096` entries.
final class DeltaCache: @unchecked Sendable {  // `storage` is touched only under `state`'s lock
    private struct State {
        var slotOf: [UInt64: Int] = [:]
        /// Per slot: the page address held, or nil when free.
        var addresses: [UInt64?]
        var referenced: [Bool]
        var free: [Int]
        var hand = 0
        /// The layout of the last ``restrict(to:)``: a round's chunks share one, so it is walked once.
        var layout: [Range<UInt64>]?
    }

    static let pageSize = Int(PageSize.bytes)
    let capacityPages: Int
    private let storage: UnsafeMutableRawBufferPointer
    private let state: Mutex<State>

    /// nil when `capacityBytes` holds less than one page (delta encoding off).
    init?(capacityBytes: UInt64) {
        let pages = Int(min(capacityBytes / PageSize.bytes, UInt64(Int32.max)))
        guard pages > 0 else { return nil }
        capacityPages = pages
        storage = .allocate(byteCount: pages * Self.pageSize, alignment: 4096)
        state = Mutex(State(addresses: Array(repeating: nil, count: pages), referenced: Array(repeating: false, count: pages),
                            free: Array((0..<pages).reversed())))
    }

    deinit { storage.deallocate() }

    /// Pages currently held.
    var count: Int { state.withLock { $0.slotOf.count } }

    /// Copies the cached content of each of `addresses` into `bases` (page `i` at offset
    /// `i × 4096`); returns which were found.
    func lookup(_ addresses: [UInt64], into bases: UnsafeMutableRawBufferPointer) -> [Bool] {
        state.withLock { s in
            addresses.enumerated().map { i, address in
                guard let slot = s.slotOf[address] else { return false }
                s.referenced[slot] = true
                (bases.baseAddress! + i * Self.pageSize).copyMemory(from: storage.baseAddress! + slot * Self.pageSize, byteCount: Self.pageSize)
                return true
            }
        }
    }

    /// Records that `pages` (back to back, in the order of `runs`) were sent. With `evict`
    /// false only free slots are taken (the first round); a page already cached is updated.
    func store(_ runs: [PageRun], pages: UnsafeRawBufferPointer, evict: Bool) {
        state.withLock { s in
            var offset = 0
            for run in runs {
                for p in 0..<UInt64(run.pageCount) {
                    let address = run.start + p * PageSize.bytes
                    defer { offset += Self.pageSize }
                    let slot: Int
                    if let held = s.slotOf[address] {
                        slot = held
                    } else if let free = s.free.popLast() {
                        slot = free
                    } else if evict {
                        slot = Self.victim(&s)
                        s.slotOf[s.addresses[slot]!] = nil
                    } else {
                        continue
                    }
                    s.slotOf[address] = slot
                    s.addresses[slot] = address
                    s.referenced[slot] = false
                    (storage.baseAddress! + slot * Self.pageSize).copyMemory(from: pages.baseAddress! + offset, byteCount: Self.pageSize)
                }
            }
        }
    }

    /// Forgets the pages of `range` (zeroed, discarded, vanished, or not committed).
    func drop(_ range: Range<UInt64>) {
        state.withLock { s in
            let pages = (range.upperBound - range.lowerBound) / PageSize.bytes
            if pages <= UInt64(s.slotOf.count) {
                var address = range.lowerBound
                while address < range.upperBound {
                    Self.release(address, &s)
                    address += PageSize.bytes
                }
            } else {
                for address in s.slotOf.keys where range.contains(address) { Self.release(address, &s) }
            }
        }
    }

    /// Forgets every page outside `layout` (ascending ranges): the receiver drops them at the commit.
    func restrict(to layout: [Range<UInt64>]) {
        state.withLock { s in
            guard s.layout != layout else { return }
            s.layout = layout
            for address in Array(s.slotOf.keys) where !PageLedger.contains(layout, address) { Self.release(address, &s) }
        }
    }

    private static func release(_ address: UInt64, _ s: inout State) {
        guard let slot = s.slotOf.removeValue(forKey: address) else { return }
        s.addresses[slot] = nil
        s.referenced[slot] = false
        s.free.append(slot)
    }

    /// CLOCK: the first slot from the hand not referenced since the hand last passed (all are held).
    private static func victim(_ s: inout State) -> Int {
        while true {
            let slot = s.hand
            s.hand = (s.hand + 1) % s.addresses.count
            if s.referenced[slot] { s.referenced[slot] = false } else { return slot }
        }
    }
}
