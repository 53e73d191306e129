import MemhaulTLS

extension ByteStream {
    /// Exactly `count` bytes, or [] at end of stream. A stream without a read
    /// timeout gets ``SafetyBound`` for this read: no byte for that long throws.
    public func readAll(count: Int) throws -> [UInt8] {
        let transport = (self as? TCPStream) ?? (self as? TLSStream)?.transport
        let unbounded = transport.map { $0.options.readTimeout == nil } ?? false
        if unbounded { try transport?.boundingReads() }
        defer { if unbounded { try? transport?.setTimeouts(read: nil, write: transport?.options.writeTimeout) } }
        var out = [UInt8](repeating: 0, count: count)
        let ok = try out.withUnsafeMutableBytes { try readExactly(into: $0) }
        return ok ? out : []
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try writeAll($0) }
    }
}
