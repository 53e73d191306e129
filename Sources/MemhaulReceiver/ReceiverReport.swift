import Foundation
import MemhaulSystem

/// The receiver's side of a migration's report: `report.json` in the image
/// directory (Protocol/image.md, "report.json"), one entry per connection,
/// appended when the connection ends. Bounded: the newest ``maxConnections``
/// connections, each with at most ``maxCommits`` commit records, and an
/// existing file is read only up to ``maxFileBytes`` (a larger or broken one
/// is started afresh), so a sender that opens many connections or sends
/// one-page chunks cannot grow it without bound.
public struct ReceiverReport: Codable, Sendable, Equatable {
    public static let fileName = "report.json"
    public static let maxConnections = 32
    public static let maxCommits = 1024
    public static let maxFileBytes = 8 << 20

    public var version = 1
    public var migration: String
    public var connections: [Connection] = []

    public struct Connection: Codable, Sendable, Equatable {
        public var peer: String
        /// RFC 3339 UTC.
        public var startedAt: String
        public var endedAt: String?
        /// The HELLO asked to resume an image this receiver holds.
        public var resumed = false
        /// The session's state at the end (`complete`, `disconnected`, `failed`, …).
        public var outcome: String?
        public var error: [String: String]?
        public var commits: [Commit] = []
        /// Commits beyond ``maxCommits``, counted only.
        public var commitsNotListed = 0

        enum CodingKeys: String, CodingKey {
            case peer
            case startedAt = "started_at"
            case endedAt = "ended_at"
            case resumed, outcome, error, commits
            case commitsNotListed = "commits_not_listed"
        }
    }

    /// One commit chunk (wire round) made durable.
    public struct Commit: Codable, Sendable, Equatable {
        public var wireRound: UInt64
        /// Since the connection started; ms.
        public var atMs: Double
        public var pages: UInt64
        public var zeroPages: UInt64
        public var discardedPages: UInt64
        /// ROUND_END received → commit point; ms.
        public var commitMs: Double
        /// Its journal flush + fsync + block reservation; ms.
        public var fsyncMs: Double
        /// The verification round (digest compared, image complete).
        public var final: Bool

        enum CodingKeys: String, CodingKey {
            case wireRound = "wire_round"
            case atMs = "at_ms"
            case pages
            case zeroPages = "zero_pages"
            case discardedPages = "discarded_pages"
            case commitMs = "commit_ms"
            case fsyncMs = "fsync_ms"
            case final
        }
    }

    static func now() -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: Date())
    }

    /// Adds `connection` to `<directory>/report.json` (write to a temporary
    /// file, rename over). Best effort: the image never depends on it.
    static func append(_ connection: Connection, migration: String, directory: String) {
        let path = directory + "/" + fileName
        var report = ReceiverReport(migration: migration)
        if let bytes = try? SmallFile.read(path, limit: maxFileBytes),
           let old = try? JSONDecoder().decode(ReceiverReport.self, from: Data(bytes)), old.migration == migration {
            report = old
        }
        report.connections.append(connection)
        report.connections = Array(report.connections.suffix(maxConnections))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(report) else { return }
        try? data.write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}
