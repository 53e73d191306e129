#if canImport(Glibc)
import Glibc
#endif

/// Names the calling thread (its `comm`, at most 15 bytes) by writing
/// `/proc/thread-self/comm`: Foundation's `Thread.name` does not always reach
/// the kernel on Linux, and a thread inherits its creator's name. Best effort:
/// the name only labels per-thread CPU figures.
public func nameCurrentThread(_ name: String) {
    guard let fd = try? Syscall.run("open(/proc/thread-self/comm)", { open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC) }) else { return }
    defer { close(fd) }
    var bytes = Array(name.utf8.prefix(15))
    _ = try? Syscall.run("write(/proc/thread-self/comm)") { write(fd, &bytes, bytes.count) }
}
