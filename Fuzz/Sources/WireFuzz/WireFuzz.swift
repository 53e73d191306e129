import MemhaulWire

// libFuzzer entry point. Every decoder sees the input; anything that decodes must re-encode to
// exactly the same bytes and decode again to the same value (the encoding is canonical, wire.md).
// A violated check traps: libFuzzer records it as a crash.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    let bytes = Array(input)

    // The preamble decoder.
    _ = try? Preamble.decode(input)

    // One frame, one shot.
    if let (header, message, used) = try? Message.decodeFrame(bytes[...]) {
        checkFrame(header: header, message: message, original: bytes[0..<used])
    }

    // The payload decoders directly (the fuzzer need not get a header length right to reach them).
    for type in FrameType.allCases {
        if let message = try? Message.decode(type: type, payload: input) {
            checkPayload(type: type, message: message, original: bytes[...])
        }
    }
    if let (header, offset) = try? PageBatchHeader.decode(input) {
        check(offset == header.encodedSize && Int(header.payloadLength) == size - offset, "PageBatchHeader.decode offsets")
    }

    // The incremental decoder on a stream, fed in chunks whose size depends on the input.
    for expectsPreamble in [false, true] {
        var decoder = FrameDecoder(expectsPreamble: expectsPreamble, checksSequence: expectsPreamble)
        let chunk = size == 0 ? 1 : Int(bytes[0] % 17) + 1
        var offset = 0
        streamLoop: while offset < size {
            let n = min(chunk, size - offset)
            decoder.append(UnsafeRawBufferPointer(rebasing: input[offset..<(offset + n)]))
            offset += n
            while true {
                let frame: Frame?
                do { frame = try decoder.nextFrame() } catch {
                    // Poisoned: the same error again.
                    do { _ = try decoder.nextFrame(); check(false, "decoder not poisoned") } catch let again {
                        check(again == error, "poisoned decoder threw a different error")
                    }
                    break streamLoop
                }
                guard let frame else { break }
                if let message = try? frame.message() {
                    var header: [UInt8] = []
                    frame.header.encode(into: &header)
                    checkFrame(header: frame.header, message: message, original: ArraySlice(header + frame.payload))
                }
            }
        }
    }
    return 0
}

func check(_ condition: Bool, _ what: StaticString) {
    if !condition { fatalError("WireFuzz: \(what)") }
}

func checkFrame(header: FrameHeader, message: Message, original: ArraySlice<UInt8>) {
    check(message.frameType == header.type, "frame type")
    var again: [UInt8] = []
    do { try message.encodeFrame(sequence: header.sequence, into: &again) } catch { check(false, "decoded frame does not re-encode") }
    check(again[...] == original, "re-encoded frame differs")
    guard let (h2, m2, used) = try? Message.decodeFrame(again[...]) else { check(false, "re-encoded frame does not decode"); return }
    check(h2 == header && m2 == message && used == again.count, "decode(encode(decode(x))) differs")
}

func checkPayload(type: FrameType, message: Message, original: ArraySlice<UInt8>) {
    check(message.frameType == type, "payload type")
    var again: [UInt8] = []
    do { try message.encodePayload(into: &again) } catch { check(false, "decoded payload does not re-encode") }
    check(again[...] == original, "re-encoded payload differs")
}
