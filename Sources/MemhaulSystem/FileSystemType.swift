#if canImport(Glibc)
import Glibc
#endif

/// The file system a path lives on, as `statfs(2)`'s `f_type` names it.
public struct FileSystemType: Hashable, Sendable, CustomStringConvertible {
    /// `f_type`, the file system's magic number (linux/magic.h).
    public let magic: UInt64

    public init(magic: UInt64) { self.magic = magic }

    /// `TMPFS_MAGIC`.
    public static let tmpfs = FileSystemType(magic: 0x0102_1994)
    /// `RAMFS_MAGIC`.
    public static let ramfs = FileSystemType(magic: 0x8584_58f6)

    /// Pages live only in memory: nothing is ever written back to a device.
    public var isMemoryOnly: Bool { self == .tmpfs || self == .ramfs }

    public var description: String {
        switch self {
        case .tmpfs: "tmpfs"
        case .ramfs: "ramfs"
        default: "0x" + String(magic, radix: 16)
        }
    }

    /// `statfs(path)`: the type of the file system holding `path`.
    public static func of(_ path: String) throws(SystemError) -> FileSystemType {
        var buffer = [UInt64](repeating: 0, count: 16)  // struct statfs: 120 bytes on 64-bit Linux, f_type first
        _ = try Syscall.run("statfs(\(path))") { buffer.withUnsafeMutableBytes { statfsFunction(path, $0.baseAddress!) } }
        return FileSystemType(magic: buffer[0])
    }
}

/// `statfs(2)`: Swift's Glibc module does not declare it (sys/vfs.h), so it
/// is looked up once by symbol, as the image files look up fallocate.
private typealias StatfsFunction = @convention(c) (UnsafePointer<CChar>, UnsafeMutableRawPointer) -> Int32
private let statfsFunction: StatfsFunction = {
    guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "statfs") else { fatalError("libc has no statfs") }
    return unsafeBitCast(sym, to: StatfsFunction.self)
}()
