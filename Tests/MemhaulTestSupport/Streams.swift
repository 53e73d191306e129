import MemhaulTLS

extension ByteStream {
    /// Exactly `count` bytes, or [] at end of stream.
    public func readAll(count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let ok = try out.withUnsafeMutableBytes { try readExactly(into: $0) }
        return ok ? out : []
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try writeAll($0) }
    }
}
