#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem
import MemhaulTLS

/// Measures single-connection loopback throughput, plaintext TCP and mutual
/// TLS 1.3, so `memhaul bench tls` can print it. Makes a throw-away PKI in a
/// temporary directory and removes it.
public enum TransportBenchmark {
    public struct Result: Sendable, CustomStringConvertible {
        /// `tcp` or the TLS cipher suite.
        public var transport: String
        public var bytes: Int
        /// Wall-clock time from the first write to the receiver's end of stream.
        public var seconds: Double
        /// CPU time of the sending and the receiving thread.
        public var senderCPUSeconds: Double
        public var receiverCPUSeconds: Double
        public var megabytesPerSecond: Double { Double(bytes) / seconds / 1e6 }
        /// Throughput if each side had a core of its own: bytes over the busier side's CPU time
        /// (a steadier figure than wall time on a shared machine).
        public var cpuBoundMegabytesPerSecond: Double { Double(bytes) / max(senderCPUSeconds, receiverCPUSeconds, 1e-9) / 1e6 }
        public var description: String {
            "\(transport): \(Int(megabytesPerSecond)) MB/s wall, \(Int(cpuBoundMegabytesPerSecond)) MB/s per core "
                + "(\(bytes >> 20) MiB in \(Int(seconds * 1000)) ms; CPU sender \(Int(senderCPUSeconds * 1000)) ms, "
                + "receiver \(Int(receiverCPUSeconds * 1000)) ms)"
        }
    }

    /// Sends `megabytes` MiB in `chunkBytes` writes over 127.0.0.1, once in
    /// plaintext and once over TLS; the receiver reads into a `chunkBytes` buffer.
    public static func run(megabytes: Int = 1024, chunkBytes: Int = 1 << 20) throws -> [Result] {
        var template = Array("/tmp/memhaul-bench-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SystemError("mkdtemp", .current)
        }
        let dir = String(cString: made)
        defer {
            for f in CertificateBundle.fileNames { unlink("\(dir)/\(f)") }
            rmdir(dir)
        }
        _ = try CertificateBundle.create(directory: dir)
        let server = try TLSServerContext(configuration: TLSConfiguration(
            caFile: "\(dir)/ca.pem", certificateFile: "\(dir)/receiver.pem", privateKeyFile: "\(dir)/receiver.key"))
        let client = try TLSClientContext(configuration: TLSConfiguration(
            caFile: "\(dir)/ca.pem", certificateFile: "\(dir)/sender.pem", privateKeyFile: "\(dir)/sender.key"))
        return [
            try measure(megabytes: megabytes, chunkBytes: chunkBytes, server: nil, client: nil),
            try measure(megabytes: megabytes, chunkBytes: chunkBytes, server: server, client: client),
        ]
    }

    private static func measure(
        megabytes: Int, chunkBytes: Int, server: TLSServerContext?, client: TLSClientContext?
    ) throws -> Result {
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        let receiver = ThreadRunner {
            let tcp = try listener.accept(timeout: .seconds(30))
            let stream: ByteStream = try server.map { try $0.accept(on: tcp) } ?? tcp
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkBytes, alignment: 4096)
            defer { buffer.deallocate() }
            let cpu0 = threadCPUSeconds()
            var total = 0
            while true {
                let n = try stream.read(into: buffer)
                if n == 0 { break }
                total += n
            }
            stream.close()
            return (total, threadCPUSeconds() - cpu0)
        }
        let stream: ByteStream =
            try client.map { try $0.connect(host: "127.0.0.1", port: listener.port) }
            ?? TCPStream.connect(host: "127.0.0.1", port: listener.port)
        let transport = (stream as? TLSStream)?.cipherSuite ?? "tcp"
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkBytes, alignment: 4096)
        defer { chunk.deallocate() }
        for i in 0..<chunkBytes { chunk[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
        let total = megabytes << 20
        let clock = ContinuousClock()
        let start = clock.now
        let cpu0 = threadCPUSeconds()
        var sent = 0
        while sent < total {
            let n = min(chunkBytes, total - sent)
            try stream.writeAll(UnsafeRawBufferPointer(rebasing: chunk[0..<n]))
            sent += n
        }
        stream.shutdown()
        let senderCPU = threadCPUSeconds() - cpu0
        let (received, receiverCPU) = try receiver.join()
        let elapsed = clock.now - start
        stream.close()
        guard received == total else { throw NetworkError.unexpectedEndOfStream(peer: "receiver", missing: total - received) }
        let (s, atto) = elapsed.components
        return Result(
            transport: transport, bytes: total, seconds: Double(s) + Double(atto) / 1e18,
            senderCPUSeconds: senderCPU, receiverCPUSeconds: receiverCPU)
    }
}

/// CPU time of the calling thread (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`).
func threadCPUSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// A pthread running one closure; `join` returns its value or rethrows.
final class ThreadRunner<T>: @unchecked Sendable {
    // @unchecked: `outcome` is written by the thread before it exits and read after pthread_join.
    private var outcome: Swift.Result<T, any Error>?
    private var thread = pthread_t()

    init(_ body: @escaping () throws -> T) {
        let entry = ThreadEntry { self.outcome = Swift.Result { try body() } }
        let rc = pthread_create(&thread, nil, threadMain, Unmanaged.passRetained(entry).toOpaque())
        precondition(rc == 0, "pthread_create: \(Errno(rawValue: rc))")
    }

    func join() throws -> T {
        pthread_join(thread, nil)
        return try outcome!.get()
    }
}

private final class ThreadEntry {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

private func threadMain(_ arg: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    Unmanaged<ThreadEntry>.fromOpaque(arg!).takeRetainedValue().run()
    return nil
}
