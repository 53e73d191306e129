import MemhaulWire
/// The names inside an image directory (Protocol/image.md, "Directory"), and
/// the rules for migration ids and image directories. Nothing here touches the
/// file system.
struct ImagePaths: Sendable {
    /// The image directory, without a trailing slash.
    let directory: String

    init(_ directory: String) { self.directory = Self.normalised(directory) }

    var manifest: String { directory + "/manifest" }
    var manifestTmp: String { directory + "/manifest.tmp" }
    var lock: String { directory + "/migration.lock" }
    var owner: String { directory + "/" + ImageOwner.fileName }
    var ownerTmp: String { directory + "/" + ImageOwner.fileName + ".tmp" }

    /// `journal-<round>`: 10 decimal digits.
    func journal(_ round: UInt32) -> String {
        let digits = String(round)
        return directory + "/journal-" + String(repeating: "0", count: max(0, 10 - digits.count)) + digits
    }

    /// `mem-<id>.bin`: 8 lower-case hex digits.
    func regionFile(_ id: UInt32) -> String { directory + "/mem-" + hex8(id) + ".bin" }

    /// The round of a `journal-<round>` entry name, nil for any other name.
    static func journalRound(ofName name: String) -> UInt32? {
        guard name.hasPrefix("journal-") else { return nil }
        return UInt32(name.dropFirst("journal-".count))
    }

    /// The id of a `mem-<id>.bin` entry name, nil for any other name.
    static func regionFileID(ofName name: String) -> UInt32? {
        guard name.hasPrefix("mem-") && name.hasSuffix(".bin") else { return nil }
        return UInt32(name.dropFirst(4).dropLast(4), radix: 16)
    }

    static func normalised(_ directory: String) -> String {
        directory.hasSuffix("/") ? String(directory.dropLast()) : directory
    }

    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}

/// 8 lower-case hex digits.
func hex8(_ v: UInt32) -> String {
    let hex = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 8 - hex.count)) + hex
}

extension ImageStore {
    /// Checks a migration id can name a directory: 1–128 of `[A-Za-z0-9._-]`, not `.` or `..`.
    public static func validate(migrationID id: String) throws(ImageError) {
        guard MigrationID.isValid(id.utf8) else { throw .invalidMigrationID(id) }
    }

    /// The image directory of `migrationID` under the images root.
    public static func directory(root: String, migrationID: String) throws(ImageError) -> String {
        try validate(migrationID: migrationID)
        return ImagePaths.normalised(root) + "/" + migrationID
    }
}
