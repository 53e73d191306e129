import MemhaulImage
import MemhaulSystem
/// A deterministic round generator for crash tests (`memhaul image torture`)
/// and their checker: the same seed always yields the same layouts, writes,
/// zeros and discards, so a checker can replay the model to any round and
/// compare it with what the store recovered.
public struct ImageTorture: Sendable {
    /// One operation of a round.
    public enum Operation: Hashable, Sendable {
        case write(address: UInt64, pages: Int)
        case zero(AddressRange)
        case discard(AddressRange)
    }

    public struct Round: Sendable {
        public var round: UInt32
        public var layout: [ImageRegion]
        public var operations: [Operation]
    }

    static let base: UInt64 = 0x7f00_0000_0000
    static let slots = 8
    static let slotPages: UInt64 = 256  // slot spacing; a region is at most 128 pages
    public let seed: UInt64
    /// Per slot: length in pages (0 = no region) and a split point (0 = none).
    private var slots: [(pages: UInt64, split: UInt64)]
    /// Model memory: page address -> pattern (absent = zeros).
    public private(set) var pages: [UInt64: UInt64] = [:]
    public private(set) var layout: [ImageRegion] = []
    public private(set) var round: UInt32 = 0

    public init(seed: UInt64) {
        self.seed = seed
        slots = Array(repeating: (0, 0), count: Self.slots)
    }

    static func mix(_ x: UInt64) -> UInt64 { SplitMix64.mix(x) }

    /// The pattern of a page written in `round` at `address` (never 0).
    public func pattern(round: UInt32, address: UInt64) -> UInt64 {
        Self.mix(seed ^ (UInt64(round) << 44) ^ address) | 1
    }

    /// Generates the next round and applies it to the model.
    public mutating func next() -> Round {
        round += 1
        var rng = Self.mix(seed &+ UInt64(round) &* 0x1000_0001)
        func random(_ n: UInt64) -> UInt64 {
            rng = Self.mix(rng)
            return rng % n
        }
        // Layout: add, remove, resize or split regions at random.
        for i in 0..<Self.slots {
            let dice = random(100)
            if slots[i].pages == 0 {
                if dice < 25 || (round == 1 && i == 0) { slots[i] = (1 + random(128), 0) }
            } else if dice < 10 {
                slots[i] = (0, 0)
            } else if dice < 30 {
                slots[i].pages = 1 + random(128)
            } else if dice < 40, slots[i].pages > 1 {
                slots[i].split = 1 + random(slots[i].pages - 1)
            }
            if slots[i].split >= slots[i].pages { slots[i].split = 0 }
        }
        if !slots.contains(where: { $0.pages > 0 }) { slots[0] = (1 + random(128), 0) }
        var regions: [ImageRegion] = []
        for (i, s) in slots.enumerated() where s.pages > 0 {
            let start = Self.base + UInt64(i) * Self.slotPages * imagePageSize
            let end = start + s.pages * imagePageSize
            if s.split > 0 {
                let mid = start + s.split * imagePageSize
                regions.append(ImageRegion(start: start, end: mid, protection: [.read, .write], name: "slot\(i)a"))
                regions.append(ImageRegion(start: mid, end: end, protection: [.read], name: "slot\(i)b"))
            } else {
                regions.append(ImageRegion(start: start, end: end, protection: [.read, .write], name: "slot\(i)"))
            }
        }
        layout = regions
        pages = pages.filter { page, _ in regions.contains { $0.start <= page && page < $0.end } }

        // Operations inside the layout.
        let occupied = slots.indices.filter { slots[$0].pages > 0 }
        var ops: [Operation] = []
        for _ in 0..<(1 + random(8)) {
            let slot = occupied[Int(random(UInt64(occupied.count)))]
            let len = slots[slot].pages
            let first = random(len)
            let count = 1 + random(min(64, len - first))
            let address = Self.base + (UInt64(slot) * Self.slotPages + first) * imagePageSize
            let kind = random(10)
            let range = AddressRange(start: address, end: address + count * imagePageSize)
            if kind < 7 {
                ops.append(.write(address: address, pages: Int(count)))
                for p in 0..<count { pages[address + p * imagePageSize] = pattern(round: round, address: address + p * imagePageSize) }
            } else {
                ops.append(kind < 9 ? .zero(range) : .discard(range))
                for p in 0..<count { pages[address + p * imagePageSize] = nil }
            }
        }
        return Round(round: round, layout: regions, operations: ops)
    }

    /// Fills `buffer` (whole pages) with the content written in `round` at `address`.
    public func fill(_ buffer: UnsafeMutableRawBufferPointer, round: UInt32, address: UInt64) {
        let words = buffer.bindMemory(to: UInt64.self)
        let perPage = Int(imagePageSize) / 8
        for page in 0..<(buffer.count / Int(imagePageSize)) {
            let value = pattern(round: round, address: address + UInt64(page) * imagePageSize)
            for w in 0..<perPage { words[page * perPage + w] = value }
        }
    }

    /// The model's bytes of `[start, end)` (zeros where nothing is stored).
    public func bytes(start: UInt64, end: UInt64) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(end - start))
        out.withUnsafeMutableBytes { p in
            var a = start
            while a < end {
                if let value = pages[a] {
                    let words = UnsafeMutableRawBufferPointer(rebasing: p[Int(a - start)..<Int(a - start + imagePageSize)])
                        .bindMemory(to: UInt64.self)
                    for w in words.indices { words[w] = value }
                }
                a += imagePageSize
            }
        }
        return out
    }

    /// Runs one generated round against a store and commits it (with
    /// `deferApply`, the caller runs `finishApply()` after it reports the commit).
    public static func run(
        _ plan: Round, on store: ImageStore, final: Bool, buffer: UnsafeMutableRawBufferPointer, model: ImageTorture,
        deferApply: Bool = false
    ) throws(ImageError) -> CommitInfo {
        try store.beginRound(plan.round, layout: plan.layout)
        for op in plan.operations {
            switch op {
            case let .write(address, count):
                let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count * Int(imagePageSize)])
                model.fill(chunk, round: plan.round, address: address)
                try store.writePages(at: address, UnsafeRawBufferPointer(chunk))
            case let .zero(range): try store.zeroPages(range)
            case let .discard(range): try store.discardPages(range)
            }
        }
        return try store.commitRound(final: final, deferApply: deferApply)
    }
}
