#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulDigest
import MemhaulSession
import MemhaulReceiver
import MemhaulImage
import MemhaulWire

// libFuzzer entry point: one input = a hostile sender's byte streams, one connection after
// another, into one real ReceiverSession each over an in-memory stream, with a real ImageStore
// under a fresh images root on tmpfs (removed after the input: inputs stay independent).
//
// Input: byte 0 picks the mode.
//   even: raw bytes, connections separated by "@@NEXT@@" (the receiver's frame decoder sees
//         exactly these bytes; the preamble is part of them)
//   odd:  structure-aware records (Builder.swift), encoded with the real codec, checksums right
// Byte 0 bit 1: tight receiver limits (``tightLimits``), so small inputs reach every limit.
// Byte 1 sets how many bytes each read returns (1...256 KiB), so frames split anywhere.
//
// Invariants beyond "no crash" (a violation traps; libFuzzer records it as a crash):
//  - the session ends (the input is finite; -timeout catches a hang);
//  - the receiver's output decodes, and WELCOME names the round the model says is committed;
//  - every ROUND_ACK answers the model's next completed round, in order, and a final one
//    carries the digest of the modelled image;
//  - afterwards every image directory opens with ImageStore.open (not locked, not corrupt)
//    at exactly the last acknowledged round, with the acknowledged layout, state and content
//    (content compared through the memory digest when the layout is at most 16 MiB).

let separator = Array("@@NEXT@@".utf8)

func check(_ condition: @autoclosure () -> Bool, _ what: @autoclosure () -> String) {
    if !condition() {
        let text = "ReceiverFuzz invariant: \(what())\n"
        eprint(text)
        abort()
    }
}

/// The images roots live under one per-process directory on tmpfs.
let scratchRoot: String = {
    let base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : NSTemporaryDirectory()
    let dir = "\(base)/memhaul-receiverfuzz-\(getpid())"
    removeTree(dir)
    mkdir(dir, 0o700)
    atexit { removeTree("/dev/shm/memhaul-receiverfuzz-\(getpid())") }
    return dir
}()
nonisolated(unsafe) var executions = 0
let quiet = ProcessInfo.processInfo.environment["MEMHAUL_FUZZ_VERBOSE"] == nil

func eprint(_ text: String) { FileHandle.standardError.write(Data(text.utf8)) }

func removeTree(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 2 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let connections: [[UInt8]]
    if bytes[0] & 1 == 0 {
        connections = split(bytes[2...])
    } else {
        var builder = StreamBuilder(bytes, from: 2)
        connections = builder.build()
    }
    let chunk = bytes[1] == 0 ? 256 << 10 : Int(bytes[1])
    let root = "\(scratchRoot)/images"
    run(connections, chunk: chunk, root: root, limits: bytes[0] & 2 != 0 ? tightLimits : ReceiverLimits())
    clearImages(root)
    executions += 1
    if executions % 256 == 0 { checkDescriptors() }
    return 0
}

func split(_ bytes: ArraySlice<UInt8>) -> [[UInt8]] {
    var result: [[UInt8]] = []
    var start = bytes.startIndex
    var i = start
    while i + separator.count <= bytes.endIndex {
        if bytes[i..<(i + separator.count)].elementsEqual(separator) {
            result.append(Array(bytes[start..<i]))
            i += separator.count
            start = i
        } else {
            i += 1
        }
    }
    result.append(Array(bytes[start...]))
    return Array(result.prefix(8))
}

/// Runs each connection through a fresh session and checks the receiver against the model.
/// Receiver limits small enough for a fuzz input (≤ 64 KiB) to reach each of them.
let tightLimits: ReceiverLimits = {
    var l = ReceiverLimits()
    l.maxLayoutRegions = 12
    l.maxLayoutBytes = 512
    l.maxPagesPerRound = 48
    l.maxRangesPerRound = 6
    l.maxImageBytes = 256 << 10
    l.maxImagesPerSender = 1
    return l
}()

/// Empties the images root for the next input, keeping the root itself (tmpfs):
/// unlinks each image's few files and removes its directory, without
/// Foundation's recursive walk.
func clearImages(_ root: String) {
    guard let top = opendir(root) else { return }
    defer { closedir(top) }
    while let e = readdir(top) {
        let name = withUnsafePointer(to: e.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
        if name == "." || name == ".." { continue }
        let dir = root + "/" + name
        if let d = opendir(dir) {
            let fd = dirfd(d)
            while let f = readdir(d) {
                let file = withUnsafePointer(to: f.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
                if file != "." && file != ".." { unlinkat(fd, file, 0) }
            }
            closedir(d)
        }
        if rmdir(dir) != 0 { removeTree(dir) }  // anything unexpected: the slow way
    }
}

func run(_ connections: [[UInt8]], chunk: Int, root: String, limits: ReceiverLimits) {
    var images: [String: ImageModel] = [:]
    let registry = ReceiverSession.Registry(
        claim: { _ in true }, release: { _ in }, preempt: { _, _ in })
    for (index, input) in connections.enumerated() {
        let stream = MemoryStream(input, chunk: chunk)
        let session = ReceiverSession(stream: stream, imagesRoot: root, registry: registry, limits: limits) { line in
            if !quiet { eprint("  \(line)\n") }
        }
        session.run()  // returns: the input is finite (a hang is a libFuzzer timeout)
        check(stream.closed, "connection \(index): the session did not close its stream")
        let info = session.info
        check(info.state != "receiving" && info.state != "handshake" || info.migration == nil,
              "connection \(index): session ended in state \(info.state)")

        // What the sender sent, as the model sees it.
        var model = ConnectionModel()
        var decoder = FrameDecoder(expectsPreamble: true)
        decoder.append(input)
        frames: while true {
            guard let frame = try? decoder.nextFrame(), let message = try? frame.message() else { break }
            if !model.process(message) { break frames }
            if case .hello(let h) = message { model.shadow = images[h.migrationID] ?? ImageModel() }
        }
        // What the receiver answered.
        var answers: [Message] = []
        var out = FrameDecoder(expectsPreamble: true)
        out.append(stream.output)
        while true {
            let frame: Frame?
            do { frame = try out.nextFrame() } catch { check(false, "connection \(index): receiver output does not decode: \(error)"); return }
            guard let frame else { break }
            guard let message = try? frame.message() else { check(false, "connection \(index): receiver sent a bad \(frame.header.type)"); return }
            answers.append(message)
        }
        check(out.bufferedByteCount == 0, "connection \(index): receiver output ends inside a frame")

        var acks: [RoundAck] = []
        var welcomed = false
        for answer in answers {
            switch answer {
            case .welcome(let w):
                check(!welcomed && acks.isEmpty, "connection \(index): WELCOME out of place")
                welcomed = true
                guard let id = model.migrationID else { check(false, "WELCOME without HELLO"); return }
                let before = images[id]
                check(w.lastCommittedRound == before?.committedRound,
                      "connection \(index): WELCOME says committed \(String(describing: w.lastCommittedRound)), model \(String(describing: before?.committedRound))")
                if before == nil { images[id] = ImageModel() }
            case .roundAck(let a):
                check(welcomed, "connection \(index): ROUND_ACK before WELCOME")
                acks.append(a)
            case .keepalive(let k):
                check(k.isReply, "connection \(index): receiver sent a keepalive request")
            case .error:
                break
            default:
                check(false, "connection \(index): receiver sent \(answer.frameType)")
            }
        }
        check(acks.count <= model.roundEnds.count,
              "connection \(index): \(acks.count) ROUND_ACKs for \(model.roundEnds.count) rounds the model accepts")
        guard let id = model.migrationID, welcomed else {
            check(acks.isEmpty, "connection \(index): acks without a WELCOME")
            continue
        }
        var image = images[id]!
        for (ack, end) in zip(acks, model.roundEnds) {
            check(ack.round == end.round, "connection \(index): ROUND_ACK \(ack.round) for ROUND_END \(end.round)")
            image.commit(end.model, number: end.round, final: end.final)
            if end.final {
                check(ack.imageDigest != nil, "connection \(index): final ack without digest")
                if let d = image.digest(model.digestVersion) {
                    check(ack.imageDigest == WireDigest(high: d.high, low: d.low),
                          "connection \(index): final ack digest \(String(describing: ack.imageDigest)) differs from the model's")
                }
            } else {
                check(ack.imageDigest == nil, "connection \(index): non-final ack with digest")
            }
        }
        images[id] = image
    }
    verifyImages(root: root, images)
}

/// Every image directory opens at the acknowledged round with the acknowledged content.
func verifyImages(root: String, _ images: [String: ImageModel]) {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
    for name in names {
        guard let model = images[name] else { check(false, "image directory \(name) the receiver never welcomed"); return }
        let store: ImageStore
        do {
            store = try ImageStore.open(directory: root + "/" + name)
        } catch {
            check(false, "image \(name) does not open: \(error)")
            return
        }
        defer { store.close() }
        check(store.committedRound.map(UInt64.init) == model.committedRound,
              "image \(name) opens at round \(String(describing: store.committedRound)), acknowledged \(String(describing: model.committedRound))")
        check(store.layout.map { ImageModel.Region(start: $0.start, end: $0.end) } == model.regions,
              "image \(name): layout differs from the acknowledged one")
        if model.complete {
            check(store.state == .complete, "image \(name): final round acknowledged, state \(store.state)")
        } else {
            check(store.state != .complete, "image \(name): complete without an acknowledged final round")
        }
        // v2: costs the stored pages, so images of any declared layout are compared.
        if let expected = model.digest(.v2) {
            do {
                let digest = try store.computeDigest(version: .v2)
                if digest != expected { check(false, "image \(name): content differs from the model: \(firstDifference(store, model))") }
            } catch {
                check(false, "image \(name): digest failed: \(error)")
            }
        }
    }
    for (id, model) in images where !names.contains(id) {
        check(false, "image \(id) (committed \(String(describing: model.committedRound))) vanished")
    }
}

func firstDifference(_ store: ImageStore, _ model: ImageModel) -> String {
    var page = [UInt8](repeating: 0, count: 4096)
    let zero = [UInt8](repeating: 0, count: 4096)
    for r in model.regions {
        var a = r.start
        while a < r.end {
            do { try page.withUnsafeMutableBytes { try store.read(at: a, into: $0) } } catch { return "read 0x\(String(a, radix: 16)): \(error)" }
            if page != (model.pages[a] ?? zero) { return "page 0x\(String(a, radix: 16))" }
            a += 4096
        }
    }
    return "no page differs (region bounds?)"
}

/// Descriptors must not leak across inputs (a session or store left open would also hold a lock).
func checkDescriptors() {
    let count = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
    check(count < 512, "\(count) open file descriptors after \(executions) inputs: a leak")
}
