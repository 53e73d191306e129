import ArgumentParser
import Foundation
import MemhaulDigest
import MemhaulImage

extension ImageCommand {
    /// Hidden: memory digest v1 vs v2 on an image (ARCHITECTURE.md "Memory digest"); not a test.
    struct DigestBench: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "digest-bench", abstract: "Time memory digest v1 and v2 over scratch images.", shouldDisplay: false)

        @Option(help: "Directory for the scratch images (removed afterwards); tmpfs keeps the disk out of it.")
        var directory = "/dev/shm"
        @Option(help: "Size of the half-zero image.")
        var size = "1G"
        @Option(help: "Empty region v1 is timed on, to extrapolate to the 1000 x 8 TiB layout.")
        var v1Sample = "4G"

        func run() throws {
            guard let total = parseNumber(size), total % (2 * imagePageSize) == 0, let sample = parseNumber(v1Sample) else {
                throw ValidationError("bad --size or --v1-sample")
            }
            func time(_ body: () throws -> MemoryDigest) rethrows -> (MemoryDigest, Double) {
                let t0 = DispatchTime.now().uptimeNanoseconds
                let d = try body()
                return (d, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            }
            func scratch(_ name: String, _ layout: [ImageRegion], _ fill: (ImageStore) throws -> Void) throws -> (ImageStore, String) {
                let dir = directory + "/memhaul-digest-bench-\(getpid())-\(name)"
                try? FileManager.default.removeItem(atPath: dir)
                let store = try ImageStore.create(directory: dir, migrationID: name)
                try store.beginRound(1, layout: layout)
                try fill(store)
                try store.commitRound()
                return (store, dir)
            }

            // 1000 regions of 8 TiB, nothing stored.
            let t: UInt64 = 8 << 40
            let huge = (0..<UInt64(1000)).map { i in
                ImageRegion(start: (1 << 44) + i * 2 * t, end: (1 << 44) + i * 2 * t + t, protection: [.read, .write], name: "")
            }
            var (store, dir) = try scratch("huge", huge) { _ in }
            let (d2, s2) = try time { try store.computeDigest(version: .v2) }
            store.close()
            try? FileManager.default.removeItem(atPath: dir)
            print(String(format: "1000 x 8 TiB empty layout: v2 %.1f ms (%@)", s2 * 1000, d2.hex))
            (store, dir) = try scratch("sample", [ImageRegion(start: 1 << 44, end: (1 << 44) + sample, protection: [.read], name: "")]) { _ in }
            let (_, s1) = try time { try store.computeDigest(version: .v1) }
            store.close()
            try? FileManager.default.removeItem(atPath: dir)
            let extrapolated = s1 * Double(1000 * t) / Double(sample)
            print(String(format: "  v1: %.2f s for %@ empty -> %.0f s = %.1f days for 8 PiB (extrapolated)", s1, bytes(sample), extrapolated, extrapolated / 86400))

            // A half-zero image: every other page has content; the zero pages once as holes, once stored as zero bytes.
            let base: UInt64 = 0x7f00_0000_0000
            let layout = [ImageRegion(start: base, end: base + total, protection: [.read, .write], name: "half")]
            let chunk = 1 << 20
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
            defer { buffer.deallocate() }
            var x: UInt64 = 0x9E37_79B9_7F4A_7C15
            for i in 0..<chunk / 8 {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                buffer.storeBytes(of: x, toByteOffset: i * 8, as: UInt64.self)
            }
            for stored in [false, true] {
                (store, dir) = try scratch(stored ? "stored" : "holes", layout) { s in
                    let page = Int(imagePageSize)
                    if stored {
                        for p in stride(from: page, to: chunk, by: 2 * page) { memset(buffer.baseAddress! + p, 0, page) }
                        var at = base
                        while at < base + total {
                            try s.writePages(at: at, UnsafeRawBufferPointer(buffer))
                            at += UInt64(chunk)
                        }
                    } else {
                        var at = base
                        while at < base + total {
                            try s.writePages(at: at, UnsafeRawBufferPointer(rebasing: buffer[0..<page]))
                            at += 2 * UInt64(page)
                        }
                    }
                }
                let (a, sa) = try time { try store.computeDigest(version: .v1) }
                let (b, sb) = try time { try store.computeDigest(version: .v2) }
                store.close()
                try? FileManager.default.removeItem(atPath: dir)
                print(String(format: "%@ half-zero image (zero pages %@): v1 %.3f s (%@), v2 %.3f s (%@)", bytes(total),
                             stored ? "stored as zero bytes" : "as holes", sa, a.hex, sb, b.hex))
            }
        }
    }
}
