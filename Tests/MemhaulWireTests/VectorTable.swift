import MemhaulWire

/// The committed test vectors (Protocol/vectors): each valid vector is one frame (or the
/// preamble); the table holds the value it must decode to. `MEMHAUL_WRITE_VECTORS=1 swift test
/// --filter VectorTests` regenerates the files and the README from this table.
struct ValidVector {
    var file: String
    var sequence: UInt32
    var message: Message
    var description: String
}

struct InvalidVector {
    enum Decoder: String { case preamble = "Preamble.decode", frame = "Message.decodeFrame" }
    var file: String
    var bytes: [UInt8]
    var decoder: Decoder
    var error: WireError
    /// The error as written in wire.md and the README.
    var errorText: String
    var description: String
}

enum VectorTable {
    /// Page 0: byte i = i & 0xff; page 1: 0xA5 repeated. XXH3-64 = 0x24c056c7bbd649d2 (xxhash 0.8).
    static let rawPages: [UInt8] = (0..<4096).map { UInt8($0 & 0xff) } + [UInt8](repeating: 0xA5, count: 4096)
    /// 16384 bytes of "memhaul page " repeated, cut at 16384; XXH3-64 = 0x7c3b87909856df17.
    static let zstdPlain: [UInt8] = Array(String(repeating: "memhaul page ", count: 1261).utf8.prefix(16384))
    /// `zstd -19 --no-check` of `zstdPlain` (a real zstd frame; the codec does not decompress it).
    static let zstdPayload: [UInt8] = [
        0x28, 0xb5, 0x2f, 0xfd, 0x60, 0x00, 0x3f, 0xad, 0x00, 0x00, 0x68, 0x6d, 0x65, 0x6d, 0x68, 0x61,
        0x75, 0x6c, 0x20, 0x70, 0x61, 0x67, 0x65, 0x20, 0x01, 0x00, 0xf0, 0x1f, 0xf8, 0xf9, 0x05,
    ]

    /// Delta payload (encoding 2) of two pages: page 0 is `rawPages` page 0 with bytes 16..<24
    /// set to 0xEE, as a 10-byte delta (unchanged 16, changed 8, the 8 bytes); page 1 is whole,
    /// 0x5A repeated. XXH3-64 of the rebuilt 8192 bytes = 0x123ac91830dcc13f (libxxhash).
    static let deltaPayload: [UInt8] = [0x0A, 0x00, 0x10, 0x08] + [UInt8](repeating: 0xEE, count: 8)
        + [0xFF, 0xFF] + [UInt8](repeating: 0x5A, count: 4096)

    static let finalDigest = WireDigest(high: 0x0123_4567_89ab_cdef, low: 0xfedc_ba98_7654_3210)

    static let valid: [ValidVector] = [
        ValidVector(
            file: "hello.bin", sequence: 0,
            message: .hello(Hello(capabilities: [.zstd, .resume, .keepalive], pageSize: 4096,
                                  migrationID: "redis-7.2_prod.01", senderName: "host-a.example", resumeFromRound: 41)),
            description: "HELLO, sequence 0: version 1.0, capabilities 0x7 (zstd + resume + keepalive), page size 4096, resume from round 41 (flag 1), migration id `redis-7.2_prod.01` (17 bytes), sender name `host-a.example` (14 bytes)."),
        ValidVector(
            file: "hello_fresh.bin", sequence: 0,
            message: .hello(Hello(capabilities: [.zstd], pageSize: 4096, migrationID: "m1", senderName: "")),
            description: "HELLO, sequence 0: version 1.0, capabilities 0x1 (zstd), page size 4096, no resume (flag 0, round field 0), migration id `m1`, empty sender name."),
        ValidVector(
            file: "welcome.bin", sequence: 0,
            message: .welcome(Welcome(capabilities: [.zstd, .resume], lastCommittedRound: 41)),
            description: "WELCOME, sequence 0: version 1.0, accepted capabilities 0x3 (zstd + resume), last committed round 41 (flag 1)."),
        ValidVector(
            file: "hello_ledger.bin", sequence: 0,
            message: .hello(Hello(capabilities: [.zstd, .resume, .keepalive, .digestV2, .ledgerDigest], pageSize: 4096,
                                  migrationID: "m2", senderName: "a")),
            description: "HELLO, sequence 0: version 1.0, capabilities 0x37 (zstd + resume + keepalive + digest-v2 + ledger-digest, bit 5), page size 4096, no resume, migration id `m2`, sender name `a`."),
        ValidVector(
            file: "welcome_ledger.bin", sequence: 0,
            message: .welcome(Welcome(capabilities: [.zstd, .resume, .keepalive, .digestV2, .ledgerDigest])),
            description: "WELCOME, sequence 0: version 1.0, accepted capabilities 0x37 (ledger-digest accepted: the verification round's digests are the ledger digest v3), no committed round (flag 0)."),
        ValidVector(
            file: "welcome_final_delta_digest.bin", sequence: 0,
            message: .welcome(Welcome(capabilities: [.zstd, .resume, .keepalive, .digestV2, .ledgerDigest, .finalDeltaDigest])),
            description: "WELCOME, sequence 0: version 1.0, accepted capabilities 0x237 (ledger-digest and final-delta-digest, bit 9, accepted: the final delta's last ROUND_END may be the final one, with pages, as in `round_end_final.bin`), no committed round (flag 0)."),
        ValidVector(
            file: "layout.bin", sequence: 1,
            message: .layout(Layout(round: 42, regions: [
                RegionDescriptor(start: 0x5555_5555_4000, end: 0x5555_5555_6000, protection: [.read, .exec], flags: [.fileBacked], name: "/usr/bin/redis-server"),
                RegionDescriptor(start: 0x7f00_0000_0000, end: 0x7f00_0040_0000, protection: [.read, .write], flags: [.hugePages], name: ""),
                RegionDescriptor(start: 0x7fff_fffd_e000, end: 0x7fff_ffff_f000, protection: [.read, .write], flags: [], name: "[stack]"),
            ])),
            description: "LAYOUT, sequence 1: round 42, not continued, 3 regions: [0x555555554000, 0x555555556000) prot r-x (0x5) flags file-backed (0x2) name `/usr/bin/redis-server`; [0x7f0000000000, 0x7f0000400000) prot rw- (0x3) flags huge-pages (0x4) empty name; [0x7ffffffde000, 0x7ffffffff000) prot rw- (0x3) flags 0 name `[stack]`."),
        ValidVector(
            file: "page_batch_raw.bin", sequence: 2,
            message: .pageBatch(PageBatch(round: 42, encoding: .raw,
                                          runs: [PageRun(start: 0x7f00_0000_0000, pageCount: 1), PageRun(start: 0x7f00_0000_2000, pageCount: 1)],
                                          uncompressedLength: 8192, checksum: 0x24c0_56c7_bbd6_49d2, payload: rawPages[...])),
            description: "PAGE_BATCH, sequence 2: round 42, encoding raw (0), 2 runs (0x7f0000000000 × 1 page, 0x7f0000002000 × 1 page), uncompressed length 8192, checksum 0x24c056c7bbd649d2 (the real XXH3-64 of the payload), 8192 payload bytes: page 0 byte i = i & 0xff, page 1 all 0xA5."),
        ValidVector(
            file: "page_batch_zstd.bin", sequence: 3,
            message: .pageBatch(PageBatch(round: 42, encoding: .zstd, runs: [PageRun(start: 0x7f00_0001_0000, pageCount: 4)],
                                          uncompressedLength: 16384, checksum: 0x7c3b_8790_9856_df17, payload: zstdPayload[...])),
            description: "PAGE_BATCH, sequence 3: round 42, encoding zstd (1), 1 run (0x7f0000010000 × 4 pages), uncompressed length 16384, checksum 0x7c3b87909856df17 (XXH3-64 of the decompressed bytes), 31 payload bytes: a real zstd frame (`zstd -19 --no-check`) of 16384 bytes of `memhaul page ` repeated."),
        ValidVector(
            file: "page_batch_delta.bin", sequence: 3,
            message: .pageBatch(PageBatch(round: 43, encoding: .delta,
                                          runs: [PageRun(start: 0x7f00_0000_0000, pageCount: 1), PageRun(start: 0x7f00_0000_2000, pageCount: 1)],
                                          uncompressedLength: 8192, checksum: 0x123a_c918_30dc_c13f, payload: deltaPayload[...])),
            description: "PAGE_BATCH, sequence 3: round 43, encoding delta (2, capability page-delta), the two pages of `page_batch_raw.bin` as committed bases. 4110 payload bytes: page 0 tag `0a 00` + 10 delta bytes `10 08 ee×8` (unchanged 16, changed 8: bytes 16..23 become 0xEE); page 1 tag `ff ff` + 4096 bytes of 0x5A (sent whole). Checksum 0x123ac91830dcc13f: XXH3-64 of the rebuilt 8192 bytes."),
        ValidVector(
            file: "zero_ranges.bin", sequence: 4,
            message: .zeroRanges(RangeList(round: 42, runs: [PageRun(start: 0x7f00_0010_0000, pageCount: 16), PageRun(start: 0x7f00_0020_0000, pageCount: 256)])),
            description: "ZERO_RANGES, sequence 4: round 42, 2 ranges: 0x7f0000100000 × 16 pages, 0x7f0000200000 × 256 pages."),
        ValidVector(
            file: "discard_ranges.bin", sequence: 5,
            message: .discardRanges(RangeList(round: 42, runs: [PageRun(start: 0x7f00_0030_0000, pageCount: 8)])),
            description: "DISCARD_RANGES, sequence 5: round 42, 1 range: 0x7f0000300000 × 8 pages."),
        ValidVector(
            file: "round_end.bin", sequence: 6,
            message: .roundEnd(RoundEnd(round: 42, stats: RoundStats(pages: 6, zeroPages: 272, discardedPages: 8, batches: 2, wireBytes: 8683))),
            description: "ROUND_END, sequence 6: round 42, pages 6, zero pages 272, discarded pages 8, batches 2, wire bytes 8683, not final (flag 0, no digest)."),
        ValidVector(
            file: "round_end_final.bin", sequence: 7,
            message: .roundEnd(RoundEnd(round: 43, stats: RoundStats(pages: 1, zeroPages: 0, discardedPages: 0, batches: 1, wireBytes: 4168), finalDigest: finalDigest)),
            description: "ROUND_END, sequence 7: round 43, pages 1, zero pages 0, discarded 0, batches 1, wire bytes 4168, final (flag 1), digest 0123456789abcdeffedcba9876543210 (bytes on the wire in that order)."),
        ValidVector(
            file: "round_ack.bin", sequence: 1,
            message: .roundAck(RoundAck(round: 42)),
            description: "ROUND_ACK, sequence 1 (receiver → sender stream): round 42, not final, no digest."),
        ValidVector(
            file: "round_ack_final.bin", sequence: 2,
            message: .roundAck(RoundAck(round: 43, imageDigest: finalDigest)),
            description: "ROUND_ACK, sequence 2: round 43, final (flag 1), image digest 0123456789abcdeffedcba9876543210."),
        ValidVector(
            file: "round_ack_load.bin", sequence: 4,
            message: .roundAck(RoundAck(round: 44, load: ReceiverLoad(networkPermille: 930, storageCPUPermille: 412, storageBusyPermille: 1000))),
            description: "ROUND_ACK, sequence 4: round 44, not final, load (flag 2, capability `receiver-load`): network thread 930, storage CPU 412, storage busy 1000 thousandths (u16 LE at offsets 10, 12, 14)."),
        ValidVector(
            file: "error.bin", sequence: 3,
            message: .error(ErrorMessage(code: .checksumMismatch, message: "checksum mismatch: round 42 batch at 0x7f0000000000")),
            description: "ERROR, sequence 3: code 6 (checksum-mismatch), message `checksum mismatch: round 42 batch at 0x7f0000000000` (51 bytes)."),
        ValidVector(
            file: "keepalive.bin", sequence: 9,
            message: .keepalive(Keepalive(nonce: 0x1122_3344_5566_7788, isReply: false)),
            description: "KEEPALIVE, sequence 9: nonce 0x1122334455667788, request (flag 0)."),
        ValidVector(
            file: "close.bin", sequence: 10,
            message: .close(Close(reason: .complete)),
            description: "CLOSE, sequence 10: reason 0 (complete)."),
        ValidVector(
            file: "restore_file.bin", sequence: 11,
            message: .restoreFile(RestoreFile(name: "pstree.img", offset: 4096, data: ArraySlice("criu image bytes".utf8))),
            description: "RESTORE_FILE, sequence 11: offset 4096, name `pstree.img` (10 bytes), 16 data bytes `criu image bytes`."),
        ValidVector(
            file: "restore_begin.bin", sequence: 12,
            message: .restoreBegin(RestoreBegin(fileCount: 13, options: [.shellJob, .tcpEstablished], totalBytes: 70_694)),
            description: "RESTORE_BEGIN, sequence 12: 13 files, options 0x3 (shell-job + tcp-established), 70694 bytes."),
        ValidVector(
            file: "restore_begin_parent.bin", sequence: 12,
            message: .restoreBegin(RestoreBegin(fileCount: 13, options: [.parentChain], totalBytes: 70_694)),
            description: "RESTORE_BEGIN, sequence 12: 13 files, options 0x10 (parent route), 70694 bytes."),
        ValidVector(
            file: "restore_done.bin", sequence: 0,
            message: .restoreDone(RestoreDone(pid: 6122, restoreMicros: 56_700, completeMicros: 524_400)),
            description: "RESTORE_DONE, sequence 0 (as if first of its direction): PID 6122, restore 56700 µs, every page in after 524400 µs."),
    ]

    static let preambleDescription = "Preamble: magic `MEMHAUL\\0` (4d 45 4d 48 41 55 4c 00), major 1, minor 0."

    /// Builds a frame header by hand (the encoder refuses to make invalid frames).
    static func header(_ type: UInt8, length: UInt32, sequence: UInt32 = 0) -> [UInt8] {
        var out: [UInt8] = [type, 0, 0, 0]
        withUnsafeBytes(of: length.littleEndian) { out += $0 }
        withUnsafeBytes(of: sequence.littleEndian) { out += $0 }
        return out
    }

    static func le64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    static func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    static var invalid: [InvalidVector] {
        let zeroPayload = le64(42) + le32(1) + le32(0) + le64(0x7f00_0000_0800) + le32(1)
        let overlapPayload = le64(42) + le32(2) + le32(0) + le64(0x7f00_0000_0000) + le32(4) + le64(0x7f00_0000_2000) + le32(1)
        var rawShort = le64(42) + [0, 0, 1, 0] + le32(4096) + le64(0)
        rawShort += le64(0x7f00_0000_0000) + le32(1) + [UInt8](repeating: 0, count: 4095)
        let deltaShort = le64(43) + [2, 0, 1, 0] + le32(8192) + le64(0) + le64(0x7f00_0000_0000) + le32(2) + [0, 0, 0]
        var keepaliveReserved = le64(1) + [0, 0, 1, 0]
        keepaliveReserved = header(0x0A, length: UInt32(keepaliveReserved.count)) + keepaliveReserved
        let twoRoutes = le32(13) + le32(0x18) + le64(70_694)
        var loadOver = le64(44) + [2, 0] + [0xE8, 0x03] + [0xE9, 0x03] + [0, 0]
        loadOver = header(0x08, length: UInt32(loadOver.count)) + loadOver
        return [
            InvalidVector(file: "bad_magic.bin", bytes: Array("MEMHAUX".utf8) + [0, 1, 0, 0, 0], decoder: .preamble, error: .badMagic,
                          errorText: "badMagic",
                          description: "Preamble with magic `MEMHAUX\\0`."),
            InvalidVector(file: "unsupported_version.bin", bytes: Preamble.magic + [2, 0, 0, 0], decoder: .preamble,
                          error: .unsupportedVersion(WireVersion(major: 2, minor: 0)),
                          errorText: "unsupportedVersion(2.0)",
                          description: "Preamble announcing version 2.0 (major differs)."),
            InvalidVector(file: "truncated_header.bin", bytes: header(0x0A, length: 12, sequence: 9).prefix(7).map { $0 }, decoder: .frame,
                          error: .truncated(needed: 12, available: 7),
                          errorText: "truncated(needed: 12, available: 7)",
                          description: "The first 7 bytes of a KEEPALIVE frame header."),
            InvalidVector(file: "oversized_length.bin", bytes: header(0x04, length: 0xFFFF_FFF0), decoder: .frame,
                          error: .payloadTooLarge(length: 0xFFFF_FFF0, limit: 4_206_616),
                          errorText: "payloadTooLarge(length: 4294967280, limit: 4206616)",
                          description: "A PAGE_BATCH header declaring a 4294967280-byte payload (no payload follows); the limit for PAGE_BATCH is 24 + 12 × 1024 + 1024 × 4096 = 4206616. Rejected from the header alone."),
            InvalidVector(file: "unaligned_address.bin", bytes: header(0x05, length: UInt32(zeroPayload.count)) + zeroPayload, decoder: .frame,
                          error: .unalignedAddress(0x7f00_0000_0800),
                          errorText: "unalignedAddress(0x7f0000000800)",
                          description: "ZERO_RANGES, round 42, one range starting at 0x7f0000000800 (not 4096-aligned)."),
            InvalidVector(file: "overlapping_ranges.bin", bytes: header(0x05, length: UInt32(overlapPayload.count)) + overlapPayload, decoder: .frame,
                          error: .rangesUnsorted(start: 0x7f00_0000_2000),
                          errorText: "rangesUnsorted(start: 0x7f0000002000)",
                          description: "ZERO_RANGES, round 42: 0x7f0000000000 × 4 pages, then 0x7f0000002000 × 1 page, which starts inside the first."),
            InvalidVector(file: "raw_length_mismatch.bin", bytes: header(0x04, length: UInt32(rawShort.count)) + rawShort, decoder: .frame,
                          error: .lengthMismatch(expected: 4096, actual: 4095),
                          errorText: "lengthMismatch(expected: 4096, actual: 4095)",
                          description: "PAGE_BATCH raw, round 42, one run of 1 page, uncompressed length 4096, but only 4095 payload bytes."),
            InvalidVector(file: "restore_two_routes.bin", bytes: header(0x0D, length: UInt32(twoRoutes.count), sequence: 12) + twoRoutes, decoder: .frame,
                          error: .invalidFlags(0x18),
                          errorText: "invalidFlags(0x18)",
                          description: "RESTORE_BEGIN with options 0x18: the rewrite route (bit 3) and the parent route (bit 4) together."),
            InvalidVector(file: "delta_too_short.bin", bytes: header(0x04, length: UInt32(deltaShort.count)) + deltaShort, decoder: .frame,
                          error: .compressedTooLarge(length: 3, uncompressed: 8192),
                          errorText: "compressedTooLarge(length: 3, uncompressed: 8192)",
                          description: "PAGE_BATCH delta (2), round 43, one run of 2 pages, but a 3-byte payload: less than the 2-byte tag of each page."),
            InvalidVector(file: "round_ack_load_over.bin", bytes: loadOver, decoder: .frame, error: .loadOutOfRange(1001),
                          errorText: "loadOutOfRange(1001)",
                          description: "ROUND_ACK, round 44, load flag set, network 1000, storage CPU 1001 thousandths (over 1000)."),
            InvalidVector(file: "reserved_not_zero.bin", bytes: keepaliveReserved, decoder: .frame, error: .reservedNotZero,
                          errorText: "reservedNotZero",
                          description: "KEEPALIVE whose reserved bytes (after the flags byte) are 00 01 00."),
        ]
    }
}
