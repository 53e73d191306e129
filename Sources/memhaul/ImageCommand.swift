import MemhaulBench
import MemhaulControl
import ArgumentParser
import Foundation
import MemhaulDigest
import MemhaulImage
import MemhaulSystem

/// `memhaul image`: look inside a receiver image (Protocol/image.md).
struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Inspect and read receiver images.",
        subcommands: [Inspect.self, Read.self, Verify.self, Export.self, ServeCRIU.self, Torture.self, Bench.self, DigestBench.self]
    )

    /// `memhaul image inspect DIR [--json] [--verify-digest]`
    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show an image's layout, committed round, history, disk use, state and digest.")

        @Argument(help: "The image directory (<images>/<migration-id>).")
        var directory: String

        @Flag(help: "Print one JSON object.")
        var json = false

        @Flag(help: "Recompute the memory digest from the stored pages (in the stored digest's version; v2 costs the stored data, v1 the whole layout).")
        var verifyDigest = false

        @Option(help: "Digest version to recompute (1, 2 or 3, the ledger digest); default: the stored digest's, else 2.")
        var digestVersion: UInt8?

        /// `--digest-version`, else the stored digest's, else v2.
        func chosenVersion(_ info: ImageInfo) -> DigestVersion {
            if let v = digestVersion, let version = DigestVersion(rawValue: v) { return version }
            if let stored = info.finalDigest { return stored.version }
            return .v2
        }

        func validate() throws {
            if let v = digestVersion, DigestVersion(rawValue: v) == nil { throw ValidationError("--digest-version must be 1, 2 or 3") }
        }

        func run() throws {
            // Read-only: a shared lock (none if a receiver is writing it), no recovery.
            let reader = try ImageReader.open(directory: directory)
            defer { reader.close() }
            let info = try reader.info()
            var recomputed: MemoryDigest?
            if verifyDigest {
                recomputed = try reader.computeDigest(version: chosenVersion(info))
                if reader.live { try reader.checkUnchanged() }
            }
            let live = reader.live
            let recovery = readerRecoveryText(reader)
            if json {
                print(try jsonText(info, recomputed, live: live, recovery: recovery))
            } else {
                print(humanText(info, recomputed, live: live, recovery: recovery), terminator: "")
            }
            if let recomputed, let stored = info.finalDigest, recomputed != stored {
                throw ValidationError("digest mismatch: stored \(stored), recomputed \(recomputed)")
            }
        }

        func jsonText(_ info: ImageInfo, _ recomputed: MemoryDigest?, live: Bool, recovery: String) throws -> String {
            var object: [String: Any] = [
                "directory": info.directory,
                "migration": info.migrationID,
                "state": info.state.description,
                "regions": info.layout.map {
                    ["start": hex($0.start), "end": hex($0.end), "protection": $0.protection.description, "name": $0.name]
                },
                "rounds": info.rounds.map {
                    [
                        "round": $0.round, "data_pages": $0.dataPages, "data_bytes": $0.dataBytes, "zero_pages": $0.zeroPages,
                        "discarded_pages": $0.discardedPages, "journal_bytes": $0.journalBytes,
                        "committed_at": isoTime($0.committedAt), "layout_changed": $0.layoutChanged,
                    ] as [String: Any]
                },
                "stored_pages": info.storedPages,
                "disk_bytes": info.diskBytes,
                "logical_bytes": info.logicalBytes,
                "created_at": isoTime(info.createdAt),
                "updated_at": isoTime(info.updatedAt),
                "recovery": recovery,
                "live": live,
            ]
            object["committed_round"] = info.committedRound.map { Int($0) } ?? NSNull()
            object["checkpointed_round"] = info.checkpointedRound.map { Int($0) } ?? NSNull()
            object["pending_journals"] = info.pendingJournals.map { Int($0) }
            object["failure_reason"] = info.failureReason ?? NSNull()
            object["digest"] = info.finalDigest?.hex ?? NSNull()
            object["digest_version"] = info.finalDigest.map { Int($0.version.rawValue) } ?? NSNull()
            switch info.owner {
            case .success(let owner?):
                object["owner"] = [
                    "common_name": owner.commonName, "sha256": owner.fingerprint, "subject": owner.subject,
                    "recorded_at": isoTime(owner.recordedAt),
                ]
            case .success(nil): object["owner"] = NSNull()
            case .failure(let error): object["owner"] = ["error": ["code": "owner_unreadable", "message": String(describing: error)]]
            }
            if let recomputed {
                object["recomputed_digest"] = recomputed.hex
                object["recomputed_digest_version"] = Int(recomputed.version.rawValue)
                if let stored = info.finalDigest { object["digest_matches"] = stored == recomputed }
            }
            return String(decoding: ControlJSON.text(object), as: UTF8.self)
        }

        func humanText(_ info: ImageInfo, _ recomputed: MemoryDigest?, live: Bool, recovery: String) -> String {
            var out = ""
            func line(_ key: String, _ value: String) { out += key.padding(toLength: 11, withPad: " ", startingAt: 0) + value + "\n" }
            line("image", info.directory)
            line("migration", info.migrationID)
            line("state", info.state.description + (info.failureReason.map { " (\($0))" } ?? "") + (live ? ", live: a receiver holds the lock" : ""))
            switch info.owner {
            case .success(let owner?): line("owner", "\(owner.commonName.isEmpty ? "-" : owner.commonName)  sha256:\(owner.fingerprint)")
            case .success(nil): line("owner", "none recorded (made without TLS)")
            case .failure(let error): line("owner", "unreadable: \(error)")
            }
            line("round", info.committedRound.map { "\($0) committed" } ?? "none committed")
            line(
                "journals",
                (info.pendingJournals.isEmpty ? "none pending" : "rounds \(info.pendingJournals.map(String.init).joined(separator: ", ")) pending")
                    + (info.checkpointedRound.map { ", checkpoint at round \($0)" } ?? ""))
            line("layout", "\(info.layout.count) regions, \(bytes(info.logicalBytes))")
            for r in info.layout {
                out += "  \(hex(r.start))-\(hex(r.end)) \(r.protection) \(String(r.pageCount).leftPad(8)) pages  \(r.name)\n"
            }
            line("stored", "\(info.storedPages) pages (\(bytes(info.storedPages * imagePageSize))), \(bytes(info.diskBytes)) on disk")
            line("digest", info.finalDigest.map { "\($0.hex) (\($0.version))" } ?? "none stored")
            if let recomputed {
                let verdict = info.finalDigest.map { $0 == recomputed ? " (matches)" : " (MISMATCH)" } ?? ""
                line("recomputed", "\(recomputed.hex) (\(recomputed.version))" + verdict)
            }
            line("recovery", recovery)
            if !info.rounds.isEmpty {
                out += "rounds:\n   round  data pages   zero  discard     journal  committed\n"
                for h in info.rounds {
                    out += "  " + String(h.round).leftPad(6) + String(h.dataPages).leftPad(12) + String(h.zeroPages).leftPad(7)
                        + String(h.discardedPages).leftPad(9) + bytes(h.journalBytes).leftPad(12) + "  " + isoTime(h.committedAt)
                        + (h.layoutChanged ? "  layout changed" : "") + "\n"
                }
            }
            return out
        }
    }

    /// `memhaul image read DIR ADDR LEN [--output FILE]`
    struct Read: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Read image memory: raw bytes to --output or a pipe, a hex dump to a terminal.")

        @Argument(help: "The image directory.")
        var directory: String
        @Argument(help: "Start address (0x-prefixed hex or decimal).")
        var address: String
        @Argument(help: "Length in bytes (hex, decimal, or with a K/M/G suffix).")
        var length: String
        @Option(name: .shortAndLong, help: "Write the raw bytes to this file.")
        var output: String?
        @Flag(help: "Hex dump even when stdout is not a terminal.")
        var hex = false

        func run() throws {
            guard let start = parseNumber(address) else { throw ValidationError("bad address \(address)") }
            guard let count = parseNumber(length) else { throw ValidationError("bad length \(length)") }
            // Read-only: a shared lock (refused while a receiver writes it), no recovery.
            let store = try ImageReader.open(directory: directory, requireLock: true)
            defer { store.close() }
            let sink: FileHandle
            if let output {
                // In place, like `cat > FILE`: a device stays a device and a
                // symbolic link keeps pointing where it did (FileManager.createFile
                // writes a temporary file and renames it over the path). A new
                // file is 0600: image memory is the migrated process's secrets.
                let fd = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
                guard fd >= 0 else { throw CLIError("cannot open \(output) for writing: \(String(cString: strerror(errno)))") }
                sink = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
            } else {
                sink = FileHandle.standardOutput
            }
            let dump = output == nil && (hex || isatty(1) == 1)
            let chunk = 1 << 20
            var buffer = [UInt8](repeating: 0, count: chunk)
            var done: UInt64 = 0
            while done < count {
                let n = Int(min(UInt64(chunk), count - done))
                try buffer.withUnsafeMutableBytes { p in
                    try store.read(at: start + done, into: UnsafeMutableRawBufferPointer(rebasing: p[0..<n]))
                }
                if dump {
                    sink.write(Data(hexDump(buffer[0..<n], address: start + done).utf8))
                } else {
                    sink.write(Data(buffer[0..<n]))
                }
                done += UInt64(n)
            }
        }
    }

    /// Hidden: writes deterministic rounds for the crash-consistency test,
    /// printing `committed K` once round K is durable.
    struct Torture: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write deterministic test rounds (crash tests).", shouldDisplay: false)

        @Argument var directory: String
        @Option var rounds: UInt32 = 20
        @Option var seed: UInt64 = 1
        @Flag(help: "Commit as a receiver does: report at the commit point, then finishApply().")
        var deferApply = false
        @Option(help: "Checkpoint threshold in bytes of pending journals (default: the store's).")
        var checkpointBytes: UInt64?

        func run() throws {
            // An existing image is recovered and continued (a crash during recovery is tested too).
            let store: ImageStore
            var model = ImageTorture(seed: seed)
            var first: UInt32 = 1
            if FileManager.default.fileExists(atPath: directory + "/manifest") {
                store = try ImageStore.open(directory: directory)
                store.checkpointThreshold = checkpointBytes
                let committed = store.committedRound ?? 0
                FileHandle.standardOutput.write(Data("recovered \(committed)\n".utf8))
                for _ in 0..<committed { _ = model.next() }
                first = committed + 1
                guard store.state == .inProgress, first <= rounds else { return }
            } else {
                try? FileManager.default.removeItem(atPath: directory)  // a create killed before its manifest
                store = try ImageStore.create(directory: directory, migrationID: "torture")
                store.checkpointThreshold = checkpointBytes
            }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 128 * Int(imagePageSize), alignment: 4096)
            defer { buffer.deallocate() }
            for k in first...max(rounds, 1) {
                let plan = model.next()
                _ = try ImageTorture.run(plan, on: store, final: k == rounds, buffer: buffer, model: model, deferApply: deferApply)
                // Unbuffered: the line is out the moment the round is durable.
                FileHandle.standardOutput.write(Data("committed \(k)\n".utf8))
                if deferApply { try store.finishApply() }
            }
        }
    }
}

extension ImageCommand {
    /// Hidden: store throughput and commit latency figures (not a test).
    struct Bench: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure image write throughput, commit latency and digest speed.", shouldDisplay: false)

        @Option(help: "Directory to create the scratch image in (removed afterwards).")
        var directory = "/tmp"
        @Option(help: "Size of the big round (K/M/G suffix).")
        var size = "1G"
        @Option(help: "Bytes per writePages call.")
        var batch = "1M"
        @Option(help: "Layout size (default: --size); the rest stays a hole.")
        var layout: String?
        @Option(help: "Size of the small round that follows the big one.")
        var smallSize = "10M"
        @Flag(help: "Checkpoint after every round (fsync every apply, as format 1.x did).")
        var checkpointEveryRound = false

        func run() throws {
            guard let total = parseNumber(size), let chunk = parseNumber(batch), chunk % imagePageSize == 0,
                let small = parseNumber(smallSize), small % imagePageSize == 0
            else {
                throw ValidationError("bad --size, --batch or --small-size")
            }
            let dir = directory + "/memhaul-image-bench-\(getpid())"
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let store = try ImageStore.create(directory: dir, migrationID: "bench")
            defer { store.close() }
            let base: UInt64 = 0x7f00_0000_0000
            guard let span = parseNumber(self.layout ?? size), span >= total, span % imagePageSize == 0 else {
                throw ValidationError("bad --layout")
            }
            let layout = [ImageRegion(start: base, end: base + span, protection: [.read, .write], name: "bench")]
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunk), alignment: 4096)
            defer { buffer.deallocate() }
            var x: UInt64 = 0x9E37_79B9_7F4A_7C15
            for i in 0..<Int(chunk) / 8 {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                buffer.storeBytes(of: x, toByteOffset: i * 8, as: UInt64.self)
            }
            func seconds(_ ns: UInt64) -> String { String(format: "%.3f s", Double(ns) / 1e9) }
            func ms(_ ns: UInt64) -> String { String(format: "%.1f ms", Double(ns) / 1e6) }
            func rate(_ bytes: UInt64, _ ns: UInt64) -> String { String(format: "%.0f MiB/s", Double(bytes) / 1_048_576 / (Double(ns) / 1e9)) }

            // Round 1: the whole size, new to the layout (written in place);
            // round 2: all of it again (journaled), committed as a receiver does
            // (deferApply, acknowledge, finishApply); round 3: a small round
            // right after the large one: its critical path from the round 2
            // acknowledgement is finishApply + writes + commit.
            store.checkpointThreshold = checkpointEveryRound ? 0 : nil
            print("checkpoint: \(checkpointEveryRound ? "after every round (1.x-like: every apply fsynced)" : "threshold \(bytes(store.effectiveCheckpointThreshold)) of pending journals")")
            func writeRange(_ start: UInt64, _ length: UInt64) throws {
                var at = start
                while at < start + length {
                    let n = Int(min(chunk, start + length - at))
                    try store.writePages(at: at, UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                    at += UInt64(n)
                }
            }
            var t0: UInt64 = 0
            for round in UInt32(1)...2 {
                try store.beginRound(round, layout: layout)
                t0 = MonotonicClock.nanoseconds()
                try writeRange(base, total)
                let writeNs = MonotonicClock.nanoseconds() - t0
                let info = try store.commitRound(deferApply: round == 2)
                let how = round == 1 ? "new pages, in place" : "overwrites, journaled, deferApply"
                print("round \(round): \(bytes(total)) (\(how)) in \(bytes(chunk)) writePages calls: \(seconds(writeNs)) (\(rate(total, writeNs)))")
                print("  commit: sync+reserve \(ms(info.syncNanoseconds)), publish \(ms(info.publishNanoseconds)), apply \(ms(info.applyNanoseconds)), checkpoint \(ms(info.checkpointNanoseconds)), total \(ms(info.totalNanoseconds))")
                print("  end to end (writes + commit): \(rate(total, writeNs + info.totalNanoseconds))")
            }
            let smallBytes = min(small, total)
            t0 = MonotonicClock.nanoseconds()
            let checkpointsBefore = store.checkpointedRound
            try store.finishApply()
            let finishNs = MonotonicClock.nanoseconds() - t0
            let checkpointed = store.checkpointedRound != checkpointsBefore
            try store.beginRound(3, layout: layout)
            let t1 = MonotonicClock.nanoseconds()
            try writeRange(base, smallBytes)
            let smallWriteNs = MonotonicClock.nanoseconds() - t1
            var info = try store.commitRound(deferApply: true)
            let criticalNs = MonotonicClock.nanoseconds() - t0
            print("round 3: \(bytes(smallBytes)) overwrites right after round 2 (deferApply):")
            print("  finishApply of round 2: \(ms(finishNs))\(checkpointed ? " (with checkpoint \(ms(store.lastCheckpointNanoseconds)))" : " (no checkpoint)"), writes \(ms(smallWriteNs)), commit \(ms(info.totalNanoseconds)) (sync \(ms(info.syncNanoseconds)), publish \(ms(info.publishNanoseconds)))")
            print("  round 2 ack -> round 3 ack (finishApply + writes + commit): \(ms(criticalNs))")
            try store.finishApply()

            // Round 4: scattered single pages, 1% of the size.
            let pages = max(1, total / imagePageSize / 100)
            try store.beginRound(4, layout: layout)
            t0 = MonotonicClock.nanoseconds()
            for i in 0..<pages {
                let address = base + ((i &* 7919) % (total / imagePageSize)) * imagePageSize
                try store.writePages(at: address, UnsafeRawBufferPointer(rebasing: buffer[0..<Int(imagePageSize)]))
            }
            let scatterNs = MonotonicClock.nanoseconds() - t0
            info = try store.commitRound()
            print("round 4: \(pages) scattered pages: append \(ms(scatterNs)), commit \(ms(info.totalNanoseconds)) (sync \(ms(info.syncNanoseconds)), publish \(ms(info.publishNanoseconds)), apply \(ms(info.applyNanoseconds)), checkpoint \(ms(info.checkpointNanoseconds)))")

            // Round 5: empty (commit overhead alone).
            try store.beginRound(5, layout: layout)
            info = try store.commitRound()
            print("round 5: empty: commit \(ms(info.totalNanoseconds)) (sync \(ms(info.syncNanoseconds)), publish \(ms(info.publishNanoseconds)), apply \(ms(info.applyNanoseconds)))")
            print("pending journals: \(store.pendingJournals.count) (\(bytes(store.pendingJournalBytes)))")
            t0 = MonotonicClock.nanoseconds()
            try store.checkpoint()
            print("checkpoint: \(ms(MonotonicClock.nanoseconds() - t0))")

            t0 = MonotonicClock.nanoseconds()
            let digest = try store.computeDigest()
            let digestNs = MonotonicClock.nanoseconds() - t0
            print("digest: \(digest) over \(bytes(span)) (\(bytes(total)) data) in \(seconds(digestNs)) (\(rate(span, digestNs)))")
            print("disk: \(bytes(try store.info().diskBytes))")
        }
    }
}

private func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

func parseNumber(_ s: String) -> UInt64? { ByteCount.parse(s) }

func bytes(_ n: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n)
    var u = 0
    while v >= 1024 && u < units.count - 1 {
        v /= 1024
        u += 1
    }
    return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
}

private func isoTime(_ ns: UInt64) -> String {
    let date = Date(timeIntervalSince1970: Double(ns) / 1e9)
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return f.string(from: date)
}

/// A reader recovers nothing: it says whether it read committed journals through.
private func readerRecoveryText(_ reader: ImageReader) -> String {
    if reader.live { return "not attempted (locked by a receiver)" }
    let rounds = reader.journalsReadThrough
    if rounds.isEmpty { return "clean" }
    return "not attempted (read-only): committed journals of rounds \(rounds.map(String.init).joined(separator: ", ")) read through; a receiver replays them on open"
}

/// `hexdump -C` style lines.
private func hexDump(_ bytes: ArraySlice<UInt8>, address: UInt64) -> String {
    var out = ""
    var i = bytes.startIndex
    while i < bytes.endIndex {
        let row = bytes[i..<min(i + 16, bytes.endIndex)]
        var line = String(address + UInt64(i - bytes.startIndex), radix: 16).leftPad(12, "0") + "  "
        for (j, b) in row.enumerated() {
            line += (b < 16 ? "0" : "") + String(b, radix: 16) + (j == 7 ? "  " : " ")
        }
        line += String(repeating: " ", count: (16 - row.count) * 3 + (row.count <= 7 ? 1 : 0))
        line += " |" + String(row.map { $0 >= 0x20 && $0 < 0x7f ? Character(UnicodeScalar($0)) : "." }) + "|\n"
        out += line
        i += 16
    }
    return out
}

extension String {
    fileprivate func leftPad(_ width: Int, _ pad: Character = " ") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}
