#if canImport(Glibc)
import Glibc
#endif

/// The terminal a descriptor is connected to.
public enum Terminal {
    /// `isatty(3)`: whether `fd` is a terminal.
    public static func isTerminal(_ fd: Int32) -> Bool { isatty(fd) == 1 }

    /// `ioctl(fd, TIOCGWINSZ)`: the terminal's width in columns; nil when
    /// `fd` is not a terminal or the width is unknown (0).
    public static func columns(_ fd: Int32) -> Int? {
        var size = winsize()
        guard (try? Syscall.run("ioctl(TIOCGWINSZ)", { ioctl(fd, UInt(TIOCGWINSZ), &size) })) != nil, size.ws_col > 0 else { return nil }
        return Int(size.ws_col)
    }
}
