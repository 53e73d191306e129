#if canImport(Glibc)
import Glibc
#endif

/// A Linux `errno` value with a readable name.
public struct Errno: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let EPERM = Errno(rawValue: 1)
    public static let ENOENT = Errno(rawValue: 2)
    public static let ESRCH = Errno(rawValue: 3)
    public static let EINTR = Errno(rawValue: 4)
    public static let EIO = Errno(rawValue: 5)
    public static let ENXIO = Errno(rawValue: 6)
    public static let E2BIG = Errno(rawValue: 7)
    public static let EBADF = Errno(rawValue: 9)
    public static let ECHILD = Errno(rawValue: 10)
    public static let EAGAIN = Errno(rawValue: 11)
    public static let ENOMEM = Errno(rawValue: 12)
    public static let EACCES = Errno(rawValue: 13)
    public static let EFAULT = Errno(rawValue: 14)
    public static let EBUSY = Errno(rawValue: 16)
    public static let EEXIST = Errno(rawValue: 17)
    public static let ENODEV = Errno(rawValue: 19)
    public static let ENOTDIR = Errno(rawValue: 20)
    public static let EISDIR = Errno(rawValue: 21)
    public static let EINVAL = Errno(rawValue: 22)
    public static let EMFILE = Errno(rawValue: 24)
    public static let ENOTTY = Errno(rawValue: 25)
    public static let EFBIG = Errno(rawValue: 27)
    public static let ENOSPC = Errno(rawValue: 28)
    public static let ESPIPE = Errno(rawValue: 29)
    public static let EROFS = Errno(rawValue: 30)
    public static let EPIPE = Errno(rawValue: 32)
    public static let ERANGE = Errno(rawValue: 34)
    public static let ENOSYS = Errno(rawValue: 38)
    public static let ENOTEMPTY = Errno(rawValue: 39)
    public static let EOPNOTSUPP = Errno(rawValue: 95)
    public static let EADDRINUSE = Errno(rawValue: 98)
    public static let EADDRNOTAVAIL = Errno(rawValue: 99)
    public static let ENETUNREACH = Errno(rawValue: 101)
    public static let ECONNABORTED = Errno(rawValue: 103)
    public static let ECONNRESET = Errno(rawValue: 104)
    public static let ETIMEDOUT = Errno(rawValue: 110)
    public static let ECONNREFUSED = Errno(rawValue: 111)
    public static let EHOSTUNREACH = Errno(rawValue: 113)
    public static let EINPROGRESS = Errno(rawValue: 115)
    public static let EDQUOT = Errno(rawValue: 122)

    private static let names: [Int32: String] = [
        1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 6: "ENXIO", 7: "E2BIG",
        9: "EBADF", 10: "ECHILD", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES", 14: "EFAULT",
        16: "EBUSY", 17: "EEXIST", 19: "ENODEV", 20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL",
        24: "EMFILE", 25: "ENOTTY", 27: "EFBIG", 28: "ENOSPC", 29: "ESPIPE", 30: "EROFS",
        32: "EPIPE", 34: "ERANGE", 38: "ENOSYS", 39: "ENOTEMPTY", 95: "EOPNOTSUPP",
        98: "EADDRINUSE", 99: "EADDRNOTAVAIL", 101: "ENETUNREACH", 103: "ECONNABORTED",
        104: "ECONNRESET", 110: "ETIMEDOUT", 111: "ECONNREFUSED", 113: "EHOSTUNREACH",
        115: "EINPROGRESS", 122: "EDQUOT",
    ]

    /// The symbolic name, e.g. `ENOTTY`, or `errno N` for one without a name here.
    public var name: String { Errno.names[rawValue] ?? "errno \(rawValue)" }

    /// Looks an errno up by its symbolic name (used by the fault-injection seam).
    public init?(name: String) {
        guard let hit = Errno.names.first(where: { $0.value == name }) else { return nil }
        self.rawValue = hit.key
    }

    /// `ENOTTY (Inappropriate ioctl for device)`: the name, then strerror(3).
    public var description: String {
        guard let message = strerror(rawValue) else { return name }
        return "\(name) (\(String(cString: message)))"
    }

    /// The calling thread's current `errno`.
    public static var current: Errno { Errno(rawValue: errno) }
}

/// A failed system call: which call, with which errno.
///
/// The message reads `pidfd_getfd: EPERM (Operation not permitted)`, so a
/// one-line CLI error names the call that failed.
public struct SystemError: Error, Hashable, Sendable, CustomStringConvertible {
    public var call: String
    public var errno: Errno
    public init(_ call: String, _ errno: Errno) {
        self.call = call
        self.errno = errno
    }
    public var description: String { "\(call): \(errno)" }
}
