#if canImport(Glibc)
import Glibc
#endif

/// The authenticated sender that created an image (Protocol/image.md, "owner").
///
/// Written once, before the image's first manifest, and never changed: a later
/// connection for the same migration id is accepted only from the certificate
/// with this fingerprint. The store itself does not compare identities; the
/// receiver session does.
public struct ImageOwner: Sendable, Hashable, CustomStringConvertible {
    /// SHA-256 of the sender's DER certificate: 64 lower-case hex digits.
    public var fingerprint: String
    /// The certificate's subject commonName ("" if it has none).
    public var commonName: String
    /// The whole identity as logged (CN, SANs, fingerprint), for humans.
    public var subject: String
    /// When the owner was recorded, ns since the Unix epoch.
    public var recordedAt: UInt64

    public init(fingerprint: String, commonName: String, subject: String, recordedAt: UInt64 = 0) {
        self.fingerprint = fingerprint
        self.commonName = commonName
        self.subject = subject
        self.recordedAt = recordedAt
    }

    /// `CN=name sha256=…`: enough to tell two senders apart in a log line.
    public var description: String { "CN=\(commonName.isEmpty ? "-" : commonName) sha256=\(fingerprint)" }

    /// Same sender: the same certificate (fingerprint).
    public func sameSender(as other: ImageOwner) -> Bool { fingerprint == other.fingerprint }

    static let magic: [UInt8] = Array("MHIMGOWN".utf8)
    static let major: UInt16 = 1
    static let minor: UInt16 = 0
    static let fileName = "owner"
    /// An owner record is a few hundred bytes; anything much larger is not one.
    static let maxFileSize = 64 << 10

    /// The file's bytes: the manifest's framing (magic, version, body length,
    /// body, XXH3-64), body = migration id, fingerprint, common name, subject, recordedAt.
    func encode(migrationID: String) -> [UInt8] {
        var body = ByteWriter()
        body.string(migrationID)
        body.string(fingerprint)
        body.string(commonName)
        body.string(subject)
        body.u64(recordedAt)
        return FramedFile.encode(magic: Self.magic, major: Self.major, minor: Self.minor, body: body.bytes)
    }

    /// Checks magic, version, length, checksum, then the body; the migration id
    /// must be the image's (an owner file copied from another image is `corrupt`).
    static func decode(_ bytes: [UInt8], migrationID: String?, file: String) throws(ImageError) -> ImageOwner {
        var (_, _, r) = try FramedFile.decode(bytes, magic: magic, maxMajor: Self.major, file: file)
        let id = try r.string()
        if let migrationID, id != migrationID {
            throw .corrupt(file: file, reason: "owner record of migration \(id), not \(migrationID)")
        }
        let fingerprint = try r.string()
        guard fingerprint.utf8.count == 64, fingerprint.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
            throw .corrupt(file: file, reason: "fingerprint is not 64 lower-case hex digits")
        }
        let owner = ImageOwner(fingerprint: fingerprint, commonName: try r.string(), subject: try r.string(), recordedAt: try r.u64())
        // A newer minor may append fields: ignore the rest of the body.
        return owner
    }
}

extension ImageStore {
    /// The owner record of the image in `directory`, read without the image
    /// lock (it is written once, before the first manifest, and never changed);
    /// nil if the image has none (created without an authenticated sender).
    /// Damage is an error, never "no owner".
    public static func owner(directory: String, migrationID: String? = nil) throws(ImageError) -> ImageOwner? {
        let dir = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        let path = dir + "/" + ImageOwner.fileName
        let f: ImageFile
        do {
            f = try ImageFile(path: path, flags: O_RDONLY)
        } catch {
            if case .io(_, _, .ENOENT) = error { return nil }
            throw error
        }
        let size = try f.size()
        guard size <= UInt64(ImageOwner.maxFileSize) else { throw .corrupt(file: path, reason: "\(size) bytes, not an owner record") }
        return try ImageOwner.decode(try readWholeFile(path), migrationID: migrationID, file: path)
    }

    /// Writes `owner` to `<dir>/owner` durably: owner.tmp (0600), fsync, rename,
    /// fsync(dir). Called by `create` before the first manifest exists, so an
    /// image with a manifest has its owner record (or was made without one).
    static func writeOwner(_ owner: ImageOwner, migrationID: String, directory dir: String) throws(ImageError) {
        let tmp = dir + "/" + ImageOwner.fileName + ".tmp"
        let path = dir + "/" + ImageOwner.fileName
        do throws(ImageError) {
            let f = try ImageFile(path: tmp, flags: O_WRONLY | O_CREAT | O_TRUNC)
            _ = try onFile("fchmod", tmp) { fchmod(f.raw, 0o600) }  // whatever the umask
            try f.writeAll(owner.encode(migrationID: migrationID))
            try f.fsync()
            _ = try onFile("rename", tmp) { rename(tmp, path) }
        } catch {
            try? unlinkIfPresent(tmp)
            throw error
        }
        try fsyncDirectory(dir)
    }
}

extension ImageStore {
    static func ownerOrProblem(_ directory: String, _ migrationID: String) -> Result<ImageOwner?, ImageError> {
        Result { () throws(ImageError) -> ImageOwner? in try owner(directory: directory, migrationID: migrationID) }
    }
}
