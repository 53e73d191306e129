import MemhaulSession
import MemhaulTLS
import MemhaulSystem

/// Why a migration failed, as the status shows it: `{"code", "message"}`, the
/// same shape as a control reply's `error` (Protocol/control.md, "Errors").
public struct StatusError: Codable, Sendable, Equatable, CustomStringConvertible {
    /// snake_case, stable for scripts: see ``init(describing:)``.
    public var code: String
    /// One line, for people.
    public var message: String

    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }

    /// The code of a migration failure: the ``MigrationError`` case, or the layer that failed.
    public init(describing error: Error) {
        let code: String = switch error {
        case let e as MigrationError:
            switch e {
            case .targetExited: "target_exited"
            case .freezeTimeout: "freeze_timeout"
            case .digestMismatch: "digest_mismatch"
            case .protocolViolation: "protocol_violation"
            case .peerError: "receiver_error"
            case .cancelled: "cancelled"
            case .invalidParameter: "invalid_parameter"
            case .connectionClosed: "connection_closed"
            case .resumeTimedOut: "resume_timed_out"
            case .peerTimeout: "receiver_deadline"
            case .downtimeLimitUnmet: "downtime_limit_unmet"
            }
        case is SystemError: "system"
        case is TLSError: "tls"
        case is NetworkError: "network"
        default: "failed"
        }
        self.init(code: code, message: String(describing: error))
    }

    public var description: String { message }
}
