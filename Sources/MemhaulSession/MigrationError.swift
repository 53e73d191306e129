import MemhaulSystem
import MemhaulTLS
import MemhaulWire

/// Errors of the migration engine, each one readable line.
public enum MigrationError: Error, Equatable, CustomStringConvertible {
    case targetExited(pid: Int32)
    case freezeTimeout(pid: Int32)
    case digestMismatch(sender: String, receiver: String)
    case protocolViolation(String)
    case peerError(code: UInt16, message: String)
    case cancelled
    case invalidParameter(String)
    case connectionClosed
    case resumeTimedOut(String)
    /// The peer did not deliver what `wait` names within `seconds` (the
    /// whole wait, however many bytes or other frames came in it).
    case peerTimeout(wait: String, seconds: Double)
    /// `--strict`: every allowed cutover was aborted because it would overrun the limit.
    case downtimeLimitUnmet(attempts: Int, limitMs: Double, detail: String)

    public var description: String {
        switch self {
        case .targetExited(let pid): return "target PID \(pid) exited during the migration"
        case .freezeTimeout(let pid): return "could not stop every thread of PID \(pid) in time"
        case .digestMismatch(let s, let r): return "image digest mismatch: sender \(s), receiver \(r)"
        case .protocolViolation(let m): return "protocol violation: \(m)"
        case .peerError(let code, let m): return "receiver reported error \(code) (\(ErrorCode(rawValue: code))): \(m)"
        case .cancelled: return "migration cancelled"
        case .invalidParameter(let m): return "invalid parameter: \(m)"
        case .connectionClosed: return "the peer closed the connection"
        case .resumeTimedOut(let last): return "could not resume the migration in time (last attempt: \(last))"
        case .downtimeLimitUnmet(let n, let limit, let detail):
            return "the downtime limit of \(Self.seconds(limit)) ms could not be met: \(n) cutovers aborted (\(detail)); the source runs on"
        case .peerTimeout(let wait, let seconds): return "receiver deadline missed: \(wait) not received within \(Self.seconds(seconds)) s"
        }
    }
}

extension MigrationError {
    /// `10`, `0.5`: a limit as the operator wrote it.
    static func seconds(_ s: Double) -> String {
        s == s.rounded() && abs(s) < 1e15 ? String(Int(s)) : String(s)
    }

    /// A broken connection (reset, timeout, TLS failure, end of stream), as
    /// opposed to a refusal by the peer: what the sender resumes after and the
    /// receiver keeps the image open for. The one place this is decided.
    public static func isConnectionLoss(_ error: Error) -> Bool {
        switch error {
        case is SystemError, is TLSError, is NetworkError: return true
        case MigrationError.connectionClosed: return true
        default: return false
        }
    }
}
