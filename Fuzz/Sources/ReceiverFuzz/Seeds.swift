#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulCompression
import MemhaulDigest
import MemhaulWire

/// Writes the seed corpus: realistic sender programs in the structure-aware format (odd mode
/// byte), and the same streams as raw bytes (even mode byte). `ReceiverFuzz --generate-seeds DIR`.
@_cdecl("ReceiverFuzzGenerateSeeds")
public func generateSeeds(_ directory: UnsafePointer<CChar>) -> CInt {
    let dir = String(cString: directory)
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for (name, program) in SeedPrograms.all {
        write(dir + "/s_" + name, program.bytes)
        var builder = StreamBuilder(program.bytes, from: 2)
        let raw = builder.build()
        var bytes: [UInt8] = [program.bytes[0] & 2, program.bytes[1]]  // raw, same limits
        for (i, c) in raw.enumerated() { bytes += (i > 0 ? separator : []) + c }
        write(dir + "/r_" + name, bytes)
    }
    for (name, bytes) in SeedPrograms.raw { write(dir + "/r_" + name, bytes) }
    print("ReceiverFuzz: wrote \(2 * SeedPrograms.all.count + SeedPrograms.raw.count) seeds to \(dir)")
    return 0
}

private func write(_ path: String, _ bytes: [UInt8]) {
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
}

/// Emits records in the format StreamBuilder reads (field for field, in its order).
struct Program {
    var bytes: [UInt8]
    /// `tight`: the receiver runs with the harness's tight limits (mode bit 1).
    init(chunk: UInt8 = 0, tight: Bool = false) { bytes = [tight ? 3 : 1, chunk] }

    mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    mutating func op(_ o: Op, _ fields: [UInt8] = []) { bytes.append(o.rawValue); bytes += fields }

    /// HELLO: `migration` 0/1 picks fz-a/fz-b; resume asks to resume from the modelled round.
    /// `otherMajor`: the HELLO's version field says 2.0 (the preamble 1.0).
    /// `noCapabilities`: the HELLO offers none (WELCOME must accept none).
    /// `digestV2`: it offers capability digestV2 (the verification round uses digest v2).
    /// `ledger`: it offers capability ledgerDigest (the verification round uses the ledger digest, v3).
    mutating func hello(migration: UInt8 = 0, resume: Bool = false, otherMajor: Bool = false, noCapabilities: Bool = false,
                        digestV2: Bool = false, ledger: Bool = false) {
        op(.hello, [(resume ? 1 : 0) | migration << 1 | (otherMajor ? 0x20 : 0) | (noCapabilities ? 0x08 : 0) | (digestV2 ? 0x40 : 0)
                    | (ledger ? 0x80 : 0), 0])
    }
    /// LAYOUT of the current round: regions as (gap pages, length pages - 1, protection).
    mutating func layout(_ regions: [(UInt8, UInt8, UInt8)], continued: Bool = false) {
        op(.layout, [continued ? 1 : 0, UInt8(regions.count - 1)])
        for (gap, length, prot) in regions { bytes += [gap, length, prot] }
    }
    /// Runs as (region index, page offset, length - 1).
    mutating func runs(_ runs: [(UInt8, UInt8, UInt8)]) {
        bytes.append(UInt8(runs.count - 1))
        for (region, offset, length) in runs { bytes += [region, offset, length] }
    }
    /// PAGE_BATCH: `kind` 1 = filled pages, 3 = every other page zero, 0 = zero pages; high nibble = pattern bytes.
    /// `delta`: as a delta batch against the modelled committed pages (capability page-delta).
    mutating func batch(_ r: [(UInt8, UInt8, UInt8)], zstd: Bool = false, badChecksum: Bool = false, delta: Bool = false,
                        kind: UInt8 = 1, fill: UInt8, pattern: [UInt8] = []) {
        op(.pageBatch, [(zstd ? 1 : 0) | (badChecksum ? 2 : 0) | (delta ? 0x10 : 0)])
        runs(r)
        bytes += [kind | UInt8(pattern.count) << 4, fill] + pattern
    }
    mutating func zero(_ r: [(UInt8, UInt8, UInt8)]) { op(.zeroRanges, [0]); runs(r) }
    mutating func discard(_ r: [(UInt8, UInt8, UInt8)]) { op(.discardRanges, [0]); runs(r) }
    mutating func roundEnd(final: Bool = false, wrongDigest: Bool = false) { op(.roundEnd, [(final ? 1 : 0) | (wrongDigest ? 8 : 0)]) }
    mutating func roundEnd(counts: [UInt8]) { op(.roundEnd, [2] + counts) }
    mutating func keepalive(_ nonce: UInt64, reply: Bool = false) { op(.keepalive, [reply ? 1 : 0]); u64(nonce) }
    mutating func error(_ code: UInt16, _ text: String) {
        op(.error, [UInt8(code & 0xff), UInt8(code >> 8), UInt8(text.utf8.count)] + text.utf8.map { $0 - 0x20 })
    }
    mutating func close(_ reason: UInt16 = 0) { op(.close, [UInt8(reason & 0xff), UInt8(reason >> 8)]) }
    mutating func newConnection() { op(.newConnection) }
    /// A whole round with the current layout: `batches` (0-3) batches of runs, `verify` adds the verification round.
    mutating func goodRound(_ batches: [[(UInt8, UInt8, UInt8)]], fill: UInt8, verify: Bool = false) {
        op(.goodRound, [UInt8(batches.count) | (verify ? 0x80 : 0)])
        for (i, r) in batches.enumerated() { runs(r); bytes.append(fill &+ UInt8(i)) }
    }
}

enum SeedPrograms {
    static var all: [(String, Program)] {
        var list: [(String, Program)] = []

        // A full migration: three rounds with a growing layout, raw and zstd batches, zero and
        // discard runs, a keepalive, then the verification round and CLOSE.
        var p = Program()
        p.hello()
        p.layout([(0, 15, 3), (2, 7, 1), (0, 3, 5)])
        p.batch([(0, 0, 3), (1, 2, 1)], fill: 0x11)
        p.batch([(0, 8, 4)], zstd: true, kind: 3, fill: 0x22, pattern: Array("memhaul".utf8))
        p.zero([(2, 0, 1)])
        p.roundEnd()
        p.layout([(0, 15, 3), (2, 7, 1), (0, 7, 5)])
        p.batch([(0, 1, 0), (2, 4, 2)], zstd: true, fill: 0x33)
        p.discard([(1, 0, 2)])
        p.keepalive(42)
        p.roundEnd()
        p.layout([(0, 15, 3), (2, 7, 1), (0, 7, 5)])
        p.batch([(1, 3, 3)], fill: 0x44)
        p.roundEnd()
        p.layout([(0, 15, 3), (2, 7, 1), (0, 7, 5)])
        p.roundEnd(final: true)
        p.close()
        list.append(("migration", p))

        // Delta batches (capability page-delta): pages re-sent with one byte of their pattern
        // changed, against the committed round; one batch mixes committed and new pages.
        p = Program()
        p.hello()
        p.layout([(0, 15, 3)])
        p.batch([(0, 0, 3)], fill: 0x11, pattern: Array("memhaul".utf8))
        p.roundEnd()
        p.layout([(0, 15, 3)])
        p.batch([(0, 0, 5)], delta: true, fill: 0x11, pattern: Array("memhaum".utf8))
        p.roundEnd()
        p.layout([(0, 15, 3)])
        p.roundEnd(final: true)
        p.close()
        list.append(("page_delta", p))

        // Resume: two rounds, a third cut off mid-round, a new connection resumes and finishes.
        p = Program()
        p.hello()
        p.goodRound([[(0, 0, 7)], [(0, 20, 3)]], fill: 0x51)
        p.goodRound([[(0, 4, 1)]], fill: 0x61)
        p.layout([(0, 63, 3)])
        p.batch([(0, 10, 5)], fill: 0x71)
        p.newConnection()
        p.hello(resume: true)
        p.goodRound([[(0, 2, 2)], [(0, 30, 0)]], fill: 0x81)
        p.goodRound([], fill: 0, verify: true)
        p.close()
        list.append(("resume", p))

        // The verification round alone, and with a wrong digest (the image is marked failed).
        p = Program()
        p.hello()
        p.goodRound([[(0, 0, 3)], [(0, 9, 0)]], fill: 0x91, verify: true)
        p.close()
        list.append(("verify", p))
        p = Program()
        p.hello()
        p.goodRound([[(0, 0, 3)]], fill: 0xa1)
        p.layout([(0, 63, 3)])
        p.roundEnd(final: true, wrongDigest: true)
        p.newConnection()
        p.hello(resume: true)
        list.append(("verify_wrong_digest", p))

        // Misbehaviour after a committed round: bad checksum, wrong counts, frames out of order,
        // the sender's ERROR, a page outside the layout, a fresh HELLO for an existing image.
        p = Program()
        p.hello()
        p.goodRound([[(0, 0, 1)]], fill: 1)
        p.layout([(0, 63, 3)])
        p.batch([(0, 0, 0)], badChecksum: true, fill: 2)
        list.append(("bad_checksum", p))
        p = Program()
        p.hello()
        p.goodRound([[(0, 0, 1)]], fill: 1)
        p.layout([(0, 63, 3)])
        p.batch([(0, 3, 0)], fill: 2)
        p.roundEnd(counts: [9, 0, 0, 1])
        list.append(("wrong_counts", p))
        p = Program()
        p.hello()
        p.batch([(0, 0, 0)], fill: 3)
        p.roundEnd()
        list.append(("batch_before_layout", p))
        p = Program()
        p.hello()
        p.goodRound([[(0, 0, 1)]], fill: 1)
        p.layout([(0, 63, 3)])
        p.batch([(0, 5, 0)], fill: 4)
        p.error(14, "operator cancelled")
        p.newConnection()
        p.hello(resume: true)
        list.append(("sender_error", p))
        p = Program()
        p.hello()
        p.goodRound([[(0, 0, 1)]], fill: 1)
        p.newConnection()
        p.hello()
        p.newConnection()
        p.hello(migration: 1)
        p.goodRound([[(0, 1, 1)]], fill: 5, verify: true)
        p.close()
        list.append(("two_migrations", p))
        p = Program()
        p.hello()
        p.layout([(0, 3, 3)], continued: true)
        p.layout([(1, 3, 3)])
        p.batch([(0, 0, 3)], zstd: true, fill: 6)
        p.keepalive(7, reply: true)
        p.roundEnd()
        p.layout([(4, 3, 3)])
        p.zero([(0, 0, 3)])
        p.roundEnd()
        p.close(2)
        list.append(("continued_layout_shrink", p))

        // A resume of a migration the receiver never had: resume-rejected, nothing created
        // (the round after it must not be acknowledged).
        p = Program()
        p.hello(resume: true)
        p.goodRound([[(0, 0, 1)]], fill: 0xc1)
        list.append(("resume_unknown", p))

        // A HELLO whose version field names major 2 after a 1.0 preamble: bad-hello, nothing
        // created; then a good migration on a new connection.
        p = Program()
        p.hello(otherMajor: true)
        p.goodRound([[(0, 0, 1)]], fill: 0xd1)
        p.newConnection()
        p.hello(migration: 1)
        p.goodRound([[(0, 0, 1)]], fill: 0xd2, verify: true)
        p.close()
        list.append(("hello_other_major", p))

        // A sender that offers no capability: WELCOME accepts none; raw batches only, a cut,
        // then a resume (offering all) that continues.
        p = Program()
        p.hello(noCapabilities: true)
        p.goodRound([[(0, 0, 3)]], fill: 0xe1)
        p.newConnection()
        p.hello(resume: true)
        p.goodRound([[(0, 4, 1)]], fill: 0xe2, verify: true)
        p.close()
        list.append(("no_capabilities", p))

        // Digest v2 (capability digestV2): a migration whose verification round uses v2,
        // with right and wrong digests, and a resume that asks for v2 again.
        p = Program()
        p.hello(digestV2: true)
        p.layout([(0, 15, 3), (40, 15, 3)])
        p.batch([(0, 0, 3), (1, 2, 1)], kind: 3, fill: 0x12)
        p.batch([(0, 8, 1)], kind: 0, fill: 0)  // present but all-zero pages: a zero run in v2
        p.roundEnd()
        p.layout([(0, 15, 3), (40, 15, 3)])
        p.roundEnd(final: true)
        p.close()
        list.append(("digest_v2", p))
        p = Program()
        p.hello(digestV2: true)
        p.goodRound([[(0, 0, 3)]], fill: 0x13)
        p.layout([(0, 63, 3)])
        p.roundEnd(final: true, wrongDigest: true)
        p.newConnection()
        p.hello(resume: true, digestV2: true)
        list.append(("digest_v2_wrong", p))
        p = Program()
        p.hello(digestV2: true)
        p.goodRound([[(0, 0, 3)]], fill: 0x14)
        p.newConnection()
        p.hello(resume: true, digestV2: true)
        p.goodRound([[(0, 5, 1)]], fill: 0x15, verify: true)
        list.append(("digest_v2_resume", p))

        // The ledger digest (capability ledgerDigest): pages overwritten, zeroed and
        // discarded across rounds, a layout that shrinks, right and wrong final
        // digests, and a resume (the receiver rebuilds its ledger from the image).
        p = Program()
        p.hello(digestV2: true, ledger: true)
        p.layout([(0, 15, 3), (40, 15, 3)])
        p.batch([(0, 0, 3), (1, 2, 1)], kind: 3, fill: 0x21)
        p.batch([(0, 8, 1)], kind: 0, fill: 0)
        p.roundEnd()
        p.layout([(0, 15, 3)])
        p.batch([(0, 1, 1)], kind: 3, fill: 0x22)
        p.zero([(0, 3, 1)])
        p.roundEnd()
        p.layout([(0, 15, 3)])
        p.roundEnd(final: true)
        p.close()
        list.append(("ledger_digest", p))
        p = Program()
        p.hello(digestV2: true, ledger: true)
        p.goodRound([[(0, 0, 3)]], fill: 0x23)
        p.layout([(0, 63, 3)])
        p.roundEnd(final: true, wrongDigest: true)
        p.newConnection()
        p.hello(resume: true, digestV2: true, ledger: true)
        list.append(("ledger_digest_wrong", p))
        p = Program()
        p.hello(digestV2: true, ledger: true)
        p.goodRound([[(0, 0, 3)]], fill: 0x24)
        p.newConnection()
        p.hello(resume: true, digestV2: true, ledger: true)
        p.goodRound([[(0, 5, 1)]], fill: 0x25, verify: true)
        list.append(("ledger_digest_resume", p))

        // Receiver limits (tight limits, ReceiverFuzz.swift): each reached after a committed round.
        p = Program(tight: true)
        p.hello()
        p.goodRound([[(0, 0, 1)]], fill: 0x21)
        for _ in 0..<3 { p.layout([(0, 1, 3), (0, 1, 3), (0, 1, 3), (0, 1, 3)], continued: true) }
        p.layout([(0, 1, 3), (0, 1, 3), (0, 1, 3), (0, 1, 3)])
        p.roundEnd()
        list.append(("limit_layout_regions", p))
        p = Program(tight: true)
        p.hello()
        p.layout([(0, 15, 3), (0, 15, 3), (0, 15, 3), (0, 15, 3)])
        p.batch([(0, 0, 7), (1, 0, 7), (2, 0, 7), (3, 0, 7)], fill: 0x22)
        p.batch([(0, 8, 7), (1, 8, 7), (2, 8, 7), (3, 8, 7)], fill: 0x23)
        p.roundEnd()
        list.append(("limit_pages_per_round", p))
        p = Program(tight: true)
        p.hello()
        p.layout([(0, 15, 3), (0, 15, 3), (0, 15, 3), (0, 15, 3)])
        p.zero([(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0)])
        p.discard([(0, 4, 0), (1, 4, 0), (2, 4, 0), (3, 4, 0)])
        p.roundEnd()
        list.append(("limit_ranges_per_round", p))
        p = Program(tight: true)
        p.hello()
        p.layout([(0, 15, 3), (0, 15, 3), (0, 15, 3), (0, 15, 3)])
        p.batch([(0, 0, 7), (1, 0, 7), (2, 0, 7), (3, 0, 7)], fill: 0x24)
        p.roundEnd()
        p.layout([(0, 15, 3), (0, 15, 3), (0, 15, 3), (0, 15, 3)])
        p.batch([(0, 8, 7), (1, 8, 7), (2, 8, 7), (3, 8, 7)], fill: 0x25)
        p.roundEnd()
        p.layout([(0, 15, 3), (0, 15, 3), (0, 15, 3), (0, 15, 3)])
        p.batch([(0, 0, 7), (1, 0, 7), (2, 0, 7), (3, 0, 7)], fill: 0x26)
        p.roundEnd()
        list.append(("limit_image_bytes", p))
        p = Program(tight: true)
        p.hello()
        p.goodRound([[(0, 0, 1)]], fill: 0x27)
        p.newConnection()
        p.hello(migration: 1)
        p.goodRound([[(0, 1, 1)]], fill: 0x28)
        p.newConnection()
        p.hello(resume: true)
        p.goodRound([[(0, 2, 1)]], fill: 0x29, verify: true)
        list.append(("limit_images_per_sender", p))

        // Small reads: frames split across many reads.
        p = Program(chunk: 7)
        p.hello()
        p.goodRound([[(0, 0, 2)], [(0, 7, 0)]], fill: 0xb1, verify: true)
        list.append(("small_reads", p))
        return list
    }

    /// Raw streams built with the codec directly (mode byte 2: raw, tight limits): what the
    /// structured format cannot say, here LAYOUT frames with long names (over the 512-byte
    /// layout cap in two frames, the region cap not reached).
    /// A raw input (`mode` byte, read size 0): the preamble and `messages` as frames.
    static func stream(mode: UInt8, _ messages: [Message]) -> [UInt8] {
        var out: [UInt8] = [mode, 0]
        Preamble.encode(into: &out)
        for (seq, m) in messages.enumerated() { try? m.encodeFrame(sequence: UInt32(seq), into: &out) }
        return out
    }

    static var raw: [(String, [UInt8])] {
        var messages: [Message] = []
        func frame(_ m: Message) { messages.append(m) }
        frame(.hello(Hello(capabilities: .v1_0, migrationID: "fz-a", senderName: "fuzz")))
        let name = String(repeating: "/usr/lib/x", count: 20)
        var start: UInt64 = 0x7f00_0000_0000
        for i in 0..<3 {
            let regions = (0..<2).map { _ -> RegionDescriptor in
                defer { start += 0x2000 }
                return RegionDescriptor(start: start, end: start + 0x1000, protection: [.read], flags: [.fileBacked], name: name)
            }
            frame(.layout(Layout(round: 1, continued: i < 2, regions: regions)))
        }
        frame(.roundEnd(RoundEnd(round: 1, stats: RoundStats())))
        return [("limit_layout_bytes", stream(mode: 2, messages)), ("page_delta_raw", pageDelta)]
    }

    /// Capability page-delta: round 1 commits two pages raw, round 2 sends them as a delta
    /// batch (page 0 an 8-byte change against the committed page, page 1 whole).
    static var pageDelta: [UInt8] {
        var messages: [Message] = []
        func frame(_ m: Message) { messages.append(m) }
        let base: UInt64 = 0x7f00_0000_0000
        let region = RegionDescriptor(start: base, end: base + 4 * 4096, protection: [.read, .write])
        let old = [UInt8](repeating: 0x11, count: 4096) + [UInt8](repeating: 0x22, count: 4096)
        var new = old
        for i in 40..<48 { new[i] = 0xEE }
        for i in 4096..<8192 { new[i] = 0x5A }
        func checksum(_ b: [UInt8]) -> UInt64 { b.withUnsafeBytes { PageChecksum.xxh3_64($0) } }
        let run = [PageRun(start: base, pageCount: 2)]
        frame(.hello(Hello(capabilities: [.zstd, .resume, .keepalive, .pageDelta], migrationID: "fz-a", senderName: "fuzz")))
        frame(.layout(Layout(round: 1, regions: [region])))
        frame(.pageBatch(PageBatch(round: 1, encoding: .raw, runs: run, uncompressedLength: 8192, checksum: checksum(old), payload: old[...])))
        frame(.roundEnd(RoundEnd(round: 1, stats: RoundStats(pages: 2, batches: 1))))
        frame(.layout(Layout(round: 2, regions: [region])))
        let delta = DeltaBatch.encode(pages: [Array(new[0..<4096]), Array(new[4096...])], bases: [Array(old[0..<4096]), Array(old[4096...])])!.payload
        frame(.pageBatch(PageBatch(round: 2, encoding: .delta, runs: run, uncompressedLength: 8192, checksum: checksum(new), payload: delta[...])))
        frame(.roundEnd(RoundEnd(round: 2, stats: RoundStats(pages: 2, batches: 1))))
        return stream(mode: 0, messages)
    }
}
