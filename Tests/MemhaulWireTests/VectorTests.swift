import Foundation
import MemhaulWire
import Testing

/// Protocol/vectors, found from this file's path.
let vectorsDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Protocol/vectors")

func readVector(_ name: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: vectorsDirectory.appendingPathComponent(name)))
}

func encodedFrame(_ v: ValidVector) throws -> [UInt8] {
    var out: [UInt8] = []
    try v.message.encodeFrame(sequence: v.sequence, into: &out)
    return out
}

@Suite struct VectorTests {
    /// Regenerates the vector files and README when MEMHAUL_WRITE_VECTORS=1 (run once, commit the output).
    @Test func writeVectorsIfAsked() throws {
        guard ProcessInfo.processInfo.environment["MEMHAUL_WRITE_VECTORS"] == "1" else { return }
        try FileManager.default.createDirectory(at: vectorsDirectory, withIntermediateDirectories: true)
        func write(_ name: String, _ bytes: [UInt8]) throws {
            try Data(bytes).write(to: vectorsDirectory.appendingPathComponent(name))
        }
        var preamble: [UInt8] = []
        Preamble.encode(into: &preamble)
        try write("preamble.bin", preamble)
        var readme = VectorReadme.header
        readme += "| file | bytes | decodes to |\n|---|---|---|\n"
        readme += "| `preamble.bin` | \(preamble.count) | \(VectorTable.preambleDescription) |\n"
        for v in VectorTable.valid {
            let bytes = try encodedFrame(v)
            try write(v.file, bytes)
            readme += "| `\(v.file)` | \(bytes.count) | \(v.description) |\n"
        }
        readme += VectorReadme.invalidHeader
        readme += "| file | bytes | decoder | expected error | what |\n|---|---|---|---|---|\n"
        for v in VectorTable.invalid {
            try write(v.file, v.bytes)
            readme += "| `\(v.file)` | \(v.bytes.count) | `\(v.decoder.rawValue)` | `\(v.errorText)` | \(v.description) |\n"
        }
        readme += "\n## Hex dumps (valid vectors, first 96 bytes)\n\n"
        for v in VectorTable.valid {
            let bytes = try encodedFrame(v)
            readme += "`\(v.file)`:\n```\n\(hexDump(bytes.prefix(96)))```\n"
        }
        try Data(readme.utf8).write(to: vectorsDirectory.appendingPathComponent("README.md"))
    }

    @Test func preambleVector() throws {
        let bytes = try readVector("preamble.bin")
        var expected: [UInt8] = []
        Preamble.encode(into: &expected)
        #expect(bytes == expected)
        #expect(bytes == [0x4d, 0x45, 0x4d, 0x48, 0x41, 0x55, 0x4c, 0x00, 1, 0, 0, 0])
        #expect(try bytes.withUnsafeBytes { try Preamble.decode($0) } == WireVersion(major: 1, minor: 0))
    }

    @Test(arguments: VectorTable.valid.map(\.file))
    func validVectorDecodesAndReencodes(file: String) throws {
        let v = try #require(VectorTable.valid.first { $0.file == file })
        let bytes = try readVector(file)
        let (header, message, used) = try Message.decodeFrame(bytes[...])
        #expect(used == bytes.count)
        #expect(header.type == v.message.frameType)
        #expect(header.sequence == v.sequence)
        #expect(Int(header.length) == bytes.count - FrameHeader.size)
        #expect(message == v.message)
        #expect(try encodedFrame(v) == bytes, "re-encoding must give the committed bytes")

        // The incremental decoder agrees, fed one byte at a time after a preamble.
        var decoder = FrameDecoder(firstSequence: v.sequence)
        var stream: [UInt8] = []
        Preamble.encode(into: &stream)
        stream += bytes
        var frames: [Frame] = []
        for b in stream {
            decoder.append(CollectionOfOne(b))
            if let f = try decoder.nextFrame() { frames.append(f) }
        }
        #expect(frames.count == 1)
        #expect(try frames.first?.message() == v.message)
        #expect(decoder.peerVersion == .current)
    }

    @Test(arguments: VectorTable.invalid.map(\.file))
    func invalidVectorGivesTypedError(file: String) throws {
        let v = try #require(VectorTable.invalid.first { $0.file == file })
        let bytes = try readVector(file)
        #expect(bytes == v.bytes)
        #expect(throws: v.error) {
            switch v.decoder {
            case .preamble: _ = try bytes.withUnsafeBytes { try Preamble.decode($0) }
            case .frame: _ = try Message.decodeFrame(bytes[...])
            }
        }
    }

    @Test func pageBatchPayloadIsASliceOfTheFrame() throws {
        let bytes = try readVector("page_batch_raw.bin")
        let (_, message, _) = try Message.decodeFrame(bytes[...])
        guard case let .pageBatch(batch) = message else { Issue.record("not a batch"); return }
        #expect(batch.payload.startIndex == FrameHeader.size + 24 + 2 * 12)
        #expect(batch.payload.endIndex == bytes.count)
        // Same storage: no copy was made.
        let same = bytes.withUnsafeBufferPointer { a in batch.payload.withUnsafeBufferPointer { b in a.baseAddress! + batch.payload.startIndex == b.baseAddress! } }
        #expect(same)
    }

    @Test func headerOnlyEncodingMatchesFullEncoding() throws {
        for v in VectorTable.valid {
            guard case let .pageBatch(batch) = v.message else { continue }
            var enc = FrameEncoder(firstSequence: v.sequence)
            var out: [UInt8] = []
            try enc.encodePageBatchHeader(batch.header, into: &out)
            out += batch.payload
            #expect(out == (try readVector(v.file)))
            #expect(enc.nextSequence == v.sequence + 1)
            let (h, off) = try out[FrameHeader.size...].withUnsafeBytes { try PageBatchHeader.decode($0) }
            #expect(h == batch.header)
            #expect(off == batch.header.encodedSize)
        }
    }
}

func hexDump(_ bytes: ArraySlice<UInt8>) -> String {
    var s = ""
    for (i, chunk) in stride(from: bytes.startIndex, to: bytes.endIndex, by: 16).enumerated() {
        let line = bytes[chunk..<min(chunk + 16, bytes.endIndex)]
        s += String(format: "%04x: ", i * 16) + line.map { String(format: "%02x", $0) }.joined(separator: " ") + "\n"
    }
    return s
}

enum VectorReadme {
    static let header = """
    # Wire protocol test vectors

    Generated from `Tests/MemhaulWireTests/VectorTable.swift` by
    `MEMHAUL_WRITE_VECTORS=1 swift test --filter VectorTests` (then committed); the tests decode
    every file, compare with the table, and re-encode byte for byte. See `Protocol/wire.md`.

    Each valid vector is exactly one frame (12-byte header + payload) as it appears on the wire
    after the 12-byte preamble, except `preamble.bin`, which is the preamble alone. The sequence
    number in each header is the one given below (a decoder checking sequences must start there).
    Defaults apply: page size 4096, limits of wire.md.

    ## Valid vectors


    """

    static let invalidHeader = """

    ## Invalid vectors

    Each must be rejected with exactly the typed error given, by the decoder named:
    `Preamble.decode` (the 12-byte stream preamble) or `Message.decodeFrame` (one frame: header,
    then payload). Errors are `WireError` cases (wire.md, "Decode errors").


    """
}
