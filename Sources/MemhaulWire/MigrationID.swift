/// The one rule for migration ids, wherever one arrives (HELLO, the control
/// interface, the CLI) and wherever one is used (it names the image directory).
public enum MigrationID {
    /// What a valid id is, for error messages.
    public static let rule = "1-\(WireLimits.maxMigrationIDLength) bytes of [A-Za-z0-9._-], not . or .."

    /// True for 1-64 bytes of `[A-Za-z0-9._-]` other than `.` and `..` (an id
    /// names a directory).
    public static func isValid(_ id: some Collection<UInt8>) -> Bool {
        guard (1...WireLimits.maxMigrationIDLength).contains(id.count) else { return false }
        guard id.allSatisfy({ c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x5F || c == 0x2D
        }) else { return false }
        return !id.elementsEqual(".".utf8) && !id.elementsEqual("..".utf8)
    }
}
