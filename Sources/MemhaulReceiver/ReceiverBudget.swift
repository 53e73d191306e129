import Foundation
import MemhaulImage
import MemhaulSystem
import MemhaulWire

/// What one connection has made the receiver hold, checked against
/// ``ReceiverLimits`` before anything is stored (wire.md "Receiver limits").
/// Every refusal is ERROR `limit-exceeded` with a message naming the limit and
/// its option; the session logs it like any refusal.
struct ReceiverBudget {
    let limits: ReceiverLimits
    /// The round's layout while its LAYOUT frames arrive.
    private(set) var layoutRegions = 0
    private(set) var layoutBytes = 0
    /// The open round.
    private(set) var pages = 0
    private(set) var ranges = 0
    /// Image disk use when the round began, plus what the round has written since.
    private var imageBytesAtBegin: UInt64 = 0
    private var roundBytes: UInt64 = 0

    init(limits: ReceiverLimits) { self.limits = limits }

    static func refuse(_ what: String) -> ReceiverSession.Refusal {
        ReceiverSession.Refusal(code: .limitExceeded, description: "limit exceeded: \(what)")
    }

    /// A LAYOUT frame: refused before its regions are kept.
    mutating func addLayout(_ layout: Layout) throws {
        let regions = layout.regions.count
        let bytes = 16 + layout.regions.reduce(0) { $0 + 20 + $1.name.utf8.count }
        guard layoutRegions + regions <= limits.maxLayoutRegions else {
            throw Self.refuse("the layout of round \(layout.round) has more than \(limits.maxLayoutRegions) regions (--max-layout-regions)")
        }
        guard layoutBytes + bytes <= limits.maxLayoutBytes else {
            throw Self.refuse("the layout of round \(layout.round) is over \(limits.maxLayoutBytes) bytes (--max-layout-bytes)")
        }
        layoutRegions += regions
        layoutBytes += bytes
    }

    /// The round's layout is complete and the round opens on `store`.
    mutating func beginRound(_ store: ImageStore) {
        layoutRegions = 0
        layoutBytes = 0
        pages = 0
        ranges = 0
        roundBytes = 0
        imageBytesAtBegin = limits.maxImageBytes == 0 ? 0 : store.diskBytes
    }

    /// A PAGE_BATCH of `count` pages, before it is stored. On disk it costs its
    /// pages, or, when the storage stage is to reserve `span` for it (gaps
    /// included), that whole span: charged when it fits. Returns whether it was
    /// (the stage reserves only then).
    @discardableResult
    mutating func addPages(_ count: Int, round: UInt64, pageSize: UInt64, reserving span: AddressRange? = nil) throws -> Bool {
        guard pages + count <= limits.maxPagesPerRound else {
            throw Self.refuse("round \(round) carries more than \(limits.maxPagesPerRound) pages (--max-pages-per-round)")
        }
        let bytes = UInt64(count) * pageSize
        let used = imageBytesAtBegin + roundBytes
        if limits.maxImageBytes > 0, used + bytes > limits.maxImageBytes {
            throw Self.refuse("the image would grow over \(limits.maxImageBytes) bytes on disk (\(used) used; --max-image-bytes)")
        }
        let reserved = span.map { max(bytes, $0.byteCount) }
        let spanFits = reserved.map { limits.maxImageBytes == 0 || used + $0 <= limits.maxImageBytes } ?? false
        pages += count
        roundBytes += spanFits ? reserved! : bytes
        return spanFits
    }

    /// A ZERO_RANGES or DISCARD_RANGES frame of `count` runs, before it is applied.
    mutating func addRanges(_ count: Int, round: UInt64) throws {
        guard ranges + count <= limits.maxRangesPerRound else {
            throw Self.refuse("round \(round) carries more than \(limits.maxRangesPerRound) zero/discard runs (--max-ranges-per-round)")
        }
        ranges += count
    }

    /// Creating a new image: `sender` may own at most `maxImagesPerSender`
    /// image directories under `root` (unauthenticated senders count together).
    /// Reads only owner records. The caller serialises it with the create
    /// (``ReceiverBudget/creation``), so two HELLOs cannot both take the last one.
    static func checkImageCount(root: String, sender: ImageOwner?, limit: Int) throws {
        guard limit > 0 else { return }
        var owned = 0
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        for name in names {
            let dir = (root.hasSuffix("/") ? String(root.dropLast()) : root) + "/" + name
            guard FileManager.default.fileExists(atPath: dir + "/manifest") || FileManager.default.fileExists(atPath: dir + "/owner") else { continue }
            let owner: ImageOwner?
            do { owner = try ImageStore.owner(directory: dir) } catch { continue }
            switch (owner, sender) {
            case (nil, nil): owned += 1
            case (let o?, let s?) where o.sameSender(as: s): owned += 1
            default: break
            }
        }
        guard owned < limit else {
            throw refuse("sender \(sender.map { "\($0)" } ?? "(unauthenticated)") already owns \(owned) images (--max-images-per-sender \(limit)); remove finished ones")
        }
    }

    /// Serialises the count and the create of new images across sessions.
    static let creation = NSLock()
}
