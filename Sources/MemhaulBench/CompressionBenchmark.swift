#if canImport(Glibc)
import Glibc
#endif
import MemhaulCompression
import MemhaulSystem

/// Measures the sender's page pipeline (zero detection + batch encoding) and
/// the receiver's decoding on mixed content, per zstd level. Prints nothing:
/// `memhaul bench compress` formats ``Result``.
public enum CompressionBenchmark {
    public struct Result: Sendable, CustomStringConvertible {
        public var level: Int32
        /// Whether batches were sampled before compressing (the ``BatchEncoder`` rule).
        public var sampling: Bool
        public var inputBytes: Int
        /// Payload bytes after zero-page elision and encoding.
        public var outputBytes: Int
        public var zeroPages: Int
        public var rawBatches: Int
        public var batches: Int
        /// Input (all pages, zero ones included) per CPU-second through classify + encode, in MB/s (10^6).
        /// CPU time of the (single) benchmark thread, so other load on the machine does not skew it.
        public var encodeMBps: Double
        /// Non-zero input per CPU-second through the decoder, in MB/s.
        public var decodeMBps: Double
        /// outputBytes / inputBytes.
        public var ratio: Double { inputBytes == 0 ? 1 : Double(outputBytes) / Double(inputBytes) }

        public var description: String {
            func f(_ x: Double, _ digits: Int) -> String {
                var s = String(Int(x * pow10(digits) + 0.5))
                if digits > 0 {
                    while s.count <= digits { s = "0" + s }
                    s.insert(".", at: s.index(s.endIndex, offsetBy: -digits))
                }
                return s
            }
            return "level \(level)\(sampling ? " (sampled)" : ""): encode \(f(encodeMBps, 0)) MB/s, "
                + "decode \(f(decodeMBps, 0)) MB/s per core, ratio \(f(ratio, 3)) "
                + "(\(outputBytes)/\(inputBytes) bytes, \(zeroPages) zero pages, \(rawBatches)/\(batches) batches raw)"
        }
    }

    /// Runs each level over `megabytes` MiB of `mix` pages in batches of
    /// `batchPages` pages, `repeats` times (best time kept).
    public static func run(
        megabytes: Int = 64, levels: [Int32] = [-1, 1, 3], batchPages: Int = 64,
        mix: MixedPages.Mix = .default, sampling: [Bool] = [false], repeats: Int = 3
    ) -> [Result] {
        let pageSize = PageClassifier.pageSize
        let source = MixedPages.make(pages: megabytes * 256, mix: mix, seed: 42)
        let batchBytes = batchPages * pageSize
        let work = UnsafeMutableRawBufferPointer.allocate(byteCount: batchBytes, alignment: 4096)
        let payloads = UnsafeMutableRawBufferPointer.allocate(byteCount: source.count + 4096, alignment: 64)
        let decoded = UnsafeMutableRawBufferPointer.allocate(byteCount: batchBytes, alignment: 4096)
        defer {
            work.deallocate()
            payloads.deallocate()
            decoded.deallocate()
        }
        var results: [Result] = []
        var classification = PageClassification()
        for sample in sampling {
            for level in levels {
                let encoder = BatchEncoder(level: level, maxBatchBytes: batchBytes, samplePages: sample ? 4 : 0)
                let decoder = BatchDecoder()
                var best = Result(
                    level: encoder.compressor.level, sampling: sample, inputBytes: source.count, outputBytes: 0,
                    zeroPages: 0, rawBatches: 0, batches: 0, encodeMBps: 0, decodeMBps: 0)
                for _ in 0..<max(repeats, 1) {
                    encoder.resetStatistics()
                    // Encoded batches: (encoding, offset in payloads, size, uncompressed size).
                    var frames: [(BatchEncoding, Int, Int, Int)] = []
                    frames.reserveCapacity(source.count / batchBytes + 1)
                    var out = 0
                    var zeroPages = 0
                    let t0 = cpuSeconds()
                    source.withUnsafeBytes { src in
                        var off = 0
                        while off < src.count {
                            let n = min(batchBytes, src.count - off)
                            work.baseAddress!.copyMemory(from: src.baseAddress! + off, byteCount: n)
                            let live = PageClassifier.classifyAndCompact(
                                batch: UnsafeMutableRawBufferPointer(rebasing: work[0..<n]), into: &classification)
                            zeroPages += classification.zeroCount
                            if live > 0 {
                                let r = try! encoder.encode(
                                    UnsafeRawBufferPointer(rebasing: work[0..<live]),
                                    into: UnsafeMutableRawBufferPointer(rebasing: payloads[out...]))
                                frames.append((r.encoding, out, r.count, live))
                                out += r.count
                            }
                            off += n
                        }
                    }
                    let encodeTime = cpuSeconds() - t0
                    let t1 = cpuSeconds()
                    var decodedBytes = 0
                    for (encoding, offset, size, expected) in frames {
                        decodedBytes += try! decoder.decode(
                            encoding, payload: UnsafeRawBufferPointer(rebasing: payloads[offset..<(offset + size)]),
                            into: decoded, expectedSize: expected)
                    }
                    let decodeTime = cpuSeconds() - t1
                    let encodeMBps = Double(source.count) / max(encodeTime, 1e-9) / 1e6
                    let decodeMBps = Double(decodedBytes) / max(decodeTime, 1e-9) / 1e6
                    best.outputBytes = out
                    best.zeroPages = zeroPages
                    best.rawBatches = encoder.statistics.rawBatches
                    best.batches = encoder.statistics.batches
                    best.encodeMBps = max(best.encodeMBps, encodeMBps)
                    best.decodeMBps = max(best.decodeMBps, decodeMBps)
                }
                results.append(best)
            }
        }
        return results
    }

    /// CPU time of the calling thread (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`).
    static func cpuSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

@inline(__always)
private func pow10(_ n: Int) -> Double {
    var x = 1.0
    for _ in 0..<n { x *= 10 }
    return x
}
