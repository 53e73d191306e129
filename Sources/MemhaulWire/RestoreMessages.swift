// The CRIU hand-over (wire.md, "Restore on the receiver"): after the proof, the sender ships the
// CRIU dump of the frozen source (RESTORE_FILE chunks, then RESTORE_BEGIN) and the receiver
// answers RESTORE_DONE with the PID of the restored process, or ERROR. Only between peers that
// both set capability bit 3 (criu-restore).

/// The rules for the names of the files of a restore (one directory, flat).
public enum RestoreFileName {
    public static let maxLength = 128
    public static let rule = "1-128 bytes of [A-Za-z0-9._-], not starting with '.'"

    /// `[A-Za-z0-9._-]{1,128}`, not starting with `.`: no `/`, no `.` or `..`, no hidden file.
    public static func isValid(_ name: some Collection<UInt8>) -> Bool {
        guard !name.isEmpty, name.count <= maxLength, name.first != UInt8(ascii: ".") else { return false }
        return name.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                || c == UInt8(ascii: ".") || c == UInt8(ascii: "_") || c == UInt8(ascii: "-")
        }
    }
}

/// RESTORE_FILE (0x0C), sender → receiver: `data` belongs at `offset` of file `name`.
public struct RestoreFile: Hashable, Sendable {
    static let fixedSize = 16
    /// Most data bytes in one frame.
    public static let maxChunk = 1 << 20

    public var name: String
    public var offset: UInt64
    public var data: ArraySlice<UInt8>

    public init(name: String, offset: UInt64, data: ArraySlice<UInt8>) {
        self.name = name
        self.offset = offset
        self.data = data
    }

    func encode(into out: inout [UInt8]) throws(WireError) {
        guard RestoreFileName.isValid(name.utf8) else { throw .invalidFileName }
        guard data.count <= Self.maxChunk else { throw .countTooLarge(count: data.count, limit: Self.maxChunk) }
        let (_, overflow) = offset.addingReportingOverflow(UInt64(data.count))
        guard !overflow else { throw .rangeOverflow(start: offset) }
        out.appendLE(offset)
        out.appendLE(UInt16(name.utf8.count))
        out.appendZeros(6)
        out.append(contentsOf: name.utf8)
        out.append(contentsOf: data)
    }

    static func decode(_ r: inout ByteReader) throws(WireError) -> RestoreFile {
        let offset = try r.read(UInt64.self)
        let nameLength = Int(try r.read(UInt16.self))
        try r.reserved(6)
        guard nameLength <= RestoreFileName.maxLength else { throw .nameTooLong(length: nameLength, limit: RestoreFileName.maxLength) }
        let nameBytes = try r.bytes(nameLength)
        guard RestoreFileName.isValid(nameBytes) else { throw .invalidFileName }
        let name = String(decoding: nameBytes, as: UTF8.self)  // ASCII, checked above
        let n = r.remaining
        guard n <= maxChunk else { throw .countTooLarge(count: n, limit: maxChunk) }
        let (_, overflow) = offset.addingReportingOverflow(UInt64(n))
        guard !overflow else { throw .rangeOverflow(start: offset) }
        let data = ArraySlice(try r.bytes(n))
        return RestoreFile(name: name, offset: offset, data: data)
    }
}

/// RESTORE_BEGIN (0x0D), sender → receiver: every file is sent; restore the process.
public struct RestoreBegin: Hashable, Sendable {
    static let size = 16

    /// CRIU options the dump was taken with, that the restore must repeat. No free-form
    /// arguments travel: the receiver never runs what the sender spells.
    public struct Options: OptionSet, Hashable, Sendable {
        public var rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// `--shell-job`: the process belongs to a session outside the dump.
        public static let shellJob = Options(rawValue: 1 << 0)
        /// `--tcp-established`: established TCP connections are restored.
        public static let tcpEstablished = Options(rawValue: 1 << 1)
        /// `--tcp-close`: established TCP connections are restored closed.
        public static let tcpClose = Options(rawValue: 1 << 2)
        /// The rewrite route: fill the dump from the image, then a plain restore
        /// (default: the lazy route, CRIU's lazy-pages daemon pulls the pages).
        public static let rewrite = Options(rawValue: 1 << 3)
        /// The parent route: a chain of CRIU parent levels over the image's region
        /// files, then a plain restore (not with `.rewrite`).
        public static let parentChain = Options(rawValue: 1 << 4)
        public static let defined: Options = [.shellJob, .tcpEstablished, .tcpClose, .rewrite, .parentChain]
    }

    /// Distinct files sent before this frame.
    public var fileCount: UInt32
    public var options: Options
    /// Data bytes of every RESTORE_FILE before this frame.
    public var totalBytes: UInt64

    public init(fileCount: UInt32, options: Options = [], totalBytes: UInt64) {
        self.fileCount = fileCount
        self.options = options
        self.totalBytes = totalBytes
    }

    static func check(_ o: Options) throws(WireError) {
        guard o.isSubset(of: .defined) else { throw .invalidFlags(UInt8(truncatingIfNeeded: o.rawValue)) }
        guard !o.isSuperset(of: [.tcpEstablished, .tcpClose]) else { throw .invalidFlags(UInt8(truncatingIfNeeded: o.rawValue)) }
        guard !o.isSuperset(of: [.rewrite, .parentChain]) else { throw .invalidFlags(UInt8(truncatingIfNeeded: o.rawValue)) }
    }

    func encode(into out: inout [UInt8]) throws(WireError) {
        try Self.check(options)
        out.appendLE(fileCount)
        out.appendLE(options.rawValue)
        out.appendLE(totalBytes)
    }

    static func decode(_ r: inout ByteReader) throws(WireError) -> RestoreBegin {
        let count = try r.read(UInt32.self)
        let options = Options(rawValue: try r.read(UInt32.self))
        let total = try r.read(UInt64.self)
        try r.finish()
        try check(options)
        return RestoreBegin(fileCount: count, options: options, totalBytes: total)
    }
}

/// RESTORE_DONE (0x0E), receiver → sender: the process runs on the receiver's host.
public struct RestoreDone: Hashable, Sendable {
    static let size = 24

    /// The restored process, as the receiver's host numbers it (> 0).
    public var pid: UInt32
    /// RESTORE_BEGIN received → restored process SIGCONTed, microseconds.
    public var restoreMicros: UInt64
    /// RESTORE_BEGIN received → every page of the image in the restored process, microseconds.
    public var completeMicros: UInt64

    public init(pid: UInt32, restoreMicros: UInt64, completeMicros: UInt64) {
        self.pid = pid
        self.restoreMicros = restoreMicros
        self.completeMicros = completeMicros
    }

    func encode(into out: inout [UInt8]) throws(WireError) {
        guard pid > 0 else { throw .invalidPID }
        out.appendLE(pid)
        out.appendZeros(4)
        out.appendLE(restoreMicros)
        out.appendLE(completeMicros)
    }

    static func decode(_ r: inout ByteReader) throws(WireError) -> RestoreDone {
        let pid = try r.read(UInt32.self)
        try r.reserved(4)
        let restore = try r.read(UInt64.self)
        let complete = try r.read(UInt64.self)
        try r.finish()
        guard pid > 0 else { throw .invalidPID }
        return RestoreDone(pid: pid, restoreMicros: restore, completeMicros: complete)
    }
}
