#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A raw HTTP/1.1 exchange over loopback TCP or a Unix socket: sends `request`
/// as is, reads until the server closes (every memhaul endpoint answers once,
/// then closes; Prometheus is asked with `Connection: close`). 30 s socket timeouts.
public func httpExchange(port: UInt16, _ request: String) throws -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestSetupError("socket: errno \(errno)") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard rc == 0 else { throw TestSetupError("connect 127.0.0.1:\(port): errno \(errno)") }
    return try exchange(fd, request)
}

public func httpExchange(unixPath: String, _ request: String) throws -> String {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestSetupError("socket: errno \(errno)") }
    defer { close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(unixPath.utf8)) }
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    guard rc == 0 else { throw TestSetupError("connect \(unixPath): errno \(errno)") }
    return try exchange(fd, request)
}

/// `GET path` with `Connection: close`; the body of a 200 answer, or an error naming the status line.
public func httpGet(port: UInt16, _ path: String) throws -> String {
    let answer = try httpExchange(port: port, "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    guard answer.hasPrefix("HTTP/1.1 200"), let split = answer.range(of: "\r\n\r\n") else {
        throw TestSetupError("GET \(path): \(answer.prefix(200))")
    }
    return String(answer[split.upperBound...])
}

private func exchange(_ fd: Int32, _ request: String) throws -> String {
    var tv = timeval(tv_sec: 30, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    let bytes = Array(request.utf8)
    var sent = 0
    while sent < bytes.count {
        let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n <= 0 { break }  // the server may answer (431) and close before taking it all
        sent += n
    }
    var answer: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n < 0 && errno == EINTR { continue }
        if n < 0 && answer.isEmpty { throw TestSetupError("recv: errno \(errno)") }
        if n <= 0 { break }
        answer += chunk[..<n]
    }
    return String(decoding: answer, as: UTF8.self)
}
