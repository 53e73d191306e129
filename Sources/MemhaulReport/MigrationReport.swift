/// The record of one migration, as `report.json` holds it (`Protocol/report.md`).
///
/// One schema for both sides: the sender fills `rounds`, `phases` and the
/// downtime; the receiver fills `chunks` and `connections`; both fill
/// `resumes`. Keys are the snake_case form of the property names (see
/// ``ReportJSON``), units are in the names. A field added later is optional,
/// so older reports still decode; unknown keys are ignored.
public struct MigrationReport: Codable, Sendable, Equatable {
    public static let currentSchemaVersion = 1

    public enum Side: String, Codable, Sendable { case sender, receiver }

    public var schemaVersion = MigrationReport.currentSchemaVersion
    public var side: Side
    public var migration: String
    /// Final state: the sender's `completed`/`failed`/`cancelled`, the receiver's
    /// `complete`/`running`/`closed`/`disconnected`/`failed`/`aborted`.
    public var state: String
    public var error: ReportError?
    /// RFC 3339, UTC, milliseconds. Every `*_ms` offset counts from here (monotonic clock).
    public var startedAt: String
    public var endedAt: String?
    public var totalMs: Double?
    /// Sender: the target and the receiver.
    public var pid: Int32?
    public var destination: String?
    /// Receiver: the image directory.
    public var imageDirectory: String?
    public var parameters: Parameters?
    public var downtime: Downtime?
    public var totals = Totals()
    public var rounds: [Round] = []
    public var phases: [Phase] = []
    public var resumes: [Resume] = []
    public var chunks: [Chunk] = []
    public var connections: [Connection] = []
    public var digest: String?
    public var warnings: [String] = []
    /// The throttle auto-converge used (`cgroup` or `signals`); absent if it never throttled.
    public var throttleMechanism: String?
    /// With `--restore criu`: the hand-over's figures.
    public var restore: Restore?
    /// Entries the size bound left out (``ReportLimits``), by list.
    public var omittedEntries: [String: Int]?

    public init(side: Side, migration: String, state: String, startedAt: String) {
        self.side = side
        self.migration = migration
        self.state = state
        self.startedAt = startedAt
    }

    /// `{code, message}`, as everywhere else in memhaul's JSON.
    public struct ReportError: Codable, Sendable, Equatable {
        public var code: String
        public var message: String
        public init(code: String, message: String) {
            self.code = code
            self.message = message
        }
    }

    /// The migration's settings at its end (live changes included).
    public struct Parameters: Codable, Sendable, Equatable {
        public var downtimeLimitMs: Double
        public var maxRounds: Int
        public var maxTimeS: Double
        public var maxBandwidthBytesPerSecond: Double?
        public var autoConverge: Bool
        public var commitChunkBytes: UInt64
        /// `auto` or a zstd level.
        public var compression: String
        /// The throttle backend asked for (`auto`, `cgroup`, `signals`) and its steps (`adaptive`, `classic`).
        public var throttle: String?
        public var throttleSteps: String?
        public init(downtimeLimitMs: Double, maxRounds: Int, maxTimeS: Double, maxBandwidthBytesPerSecond: Double?,
                    autoConverge: Bool, commitChunkBytes: UInt64, compression: String) {
            self.downtimeLimitMs = downtimeLimitMs
            self.maxRounds = maxRounds
            self.maxTimeS = maxTimeS
            self.maxBandwidthBytesPerSecond = maxBandwidthBytesPerSecond
            self.autoConverge = autoConverge
            self.commitChunkBytes = commitChunkBytes
            self.compression = compression
        }
    }

    /// The frozen window against the limit (sender).
    public struct Downtime: Codable, Sendable, Equatable {
        public var limitMs: Double
        /// Predicted by the convergence policy when it decided to cut over.
        public var expectedMs: Double?
        /// Frozen → final delta committed by the receiver.
        public var downtimeMs: Double?
        /// Frozen → released (the proof included): what the limit is judged against.
        public var frozenMs: Double?
        /// With `--restore criu`: frozen → running on the receiver.
        public var frozenWindowMs: Double?
        /// Offsets of the frozen window on the report's clock.
        public var frozenStartMs: Double?
        public var frozenEndMs: Double?
        public var exceeded: Bool
        public var cutoverReason: String?
        public init(limitMs: Double, exceeded: Bool = false) {
            self.limitMs = limitMs
            self.exceeded = exceeded
        }
    }

    public struct Totals: Codable, Sendable, Equatable {
        public var pages: UInt64 = 0
        public var zeroPages: UInt64 = 0
        public var discardedPages: UInt64 = 0
        public var pageBytes: UInt64 = 0
        public var wireBytes: UInt64 = 0
        public var rounds: Int = 0
        public var chunks: Int = 0
        public var resentBytesAfterResume: UInt64 = 0
        public init() {}
    }

    /// One engine round (sender): its commit chunks, what it sent, what the policy made of it.
    public struct Round: Codable, Sendable, Equatable {
        public var round: Int
        /// The wire rounds (commit chunks) it travelled as.
        public var firstChunk: UInt64 = 0
        public var lastChunk: UInt64 = 0
        public var startedAt: String = ""
        public var endedAt: String = ""
        public var startMs: Double = 0
        public var endMs: Double = 0
        public var durationMs: Double = 0
        /// Sending the frames, and waiting for the last acknowledgement.
        public var streamMs: Double = 0
        public var commitWaitMs: Double = 0
        public var pages: UInt64 = 0
        public var zeroPages: UInt64 = 0
        public var discardedPages: UInt64 = 0
        public var pageBytes: UInt64 = 0
        public var wireBytes: UInt64 = 0
        public var throughputBytesPerSecond: Double = 0
        public var wireBytesPerSecond: Double = 0
        /// Dirtied while this round ran, found by the next scan (none after the final round).
        public var dirtyRateBytesPerSecond: Double?
        public var pendingBytes: UInt64?
        /// `zstd N` or `raw`, and N.
        public var compression: String = ""
        public var compressionLevel: Int?
        public var throttlePercent: Int = 0
        /// The policy's prediction for a final round of this round's pending
        /// set, made after the previous round (nil for round 0), and this round's actual length.
        public var predictedMs: Double?
        /// The prediction after this round (the downtime to expect if it cut over now).
        public var expectedDowntimeMs: Double?
        /// `next_round`, `throttle`, `cutover`; `final` for the frozen round.
        public var decision: String?
        public var decisionReason: String?
        /// Sent with the target frozen (the final delta).
        public var frozen: Bool = false
        public init(round: Int) { self.round = round }
    }

    /// A span of the migration: setup, pre_copy, freeze, final_delta, verify, restore, release.
    public struct Phase: Codable, Sendable, Equatable {
        public var name: String
        public var startedAt: String
        public var startMs: Double
        public var endMs: Double
        public var durationMs: Double
        public init(name: String, startedAt: String, startMs: Double, endMs: Double) {
            self.name = name
            self.startedAt = startedAt
            self.startMs = startMs
            self.endMs = endMs
            durationMs = ReportClock.round3(endMs - startMs)
        }
    }

    /// A connection that broke and came back.
    public struct Resume: Codable, Sendable, Equatable {
        public var at: String
        public var atMs: Double
        /// The receiver's last committed commit chunk: sending went on after it.
        public var committedChunk: UInt64?
        /// Wire bytes the break cost (sent after that commit, dropped, sent again); sender only.
        public var resentBytes: UInt64?
        /// Break noticed → welcomed again; sender only.
        public var reconnectMs: Double?
        public var reason: String?
        public init(at: String, atMs: Double) {
            self.at = at
            self.atMs = atMs
        }
    }

    /// One commit chunk (wire round) the receiver committed.
    public struct Chunk: Codable, Sendable, Equatable {
        public var chunk: UInt64
        public var committedAt: String
        public var atMs: Double
        public var pages: UInt64
        public var zeroPages: UInt64
        public var discardedPages: UInt64
        public var pageBytes: UInt64
        public var wireBytes: UInt64
        /// `commitRound`: journal fsync, manifest publish, checkpoint.
        public var commitMs: Double
        public var fsyncMs: Double
        /// The verification round (no pages; the digest).
        public var final: Bool
        public init(chunk: UInt64, committedAt: String, atMs: Double, pages: UInt64, zeroPages: UInt64, discardedPages: UInt64,
                    pageBytes: UInt64, wireBytes: UInt64, commitMs: Double, fsyncMs: Double, final: Bool) {
            self.chunk = chunk
            self.committedAt = committedAt
            self.atMs = atMs
            self.pages = pages
            self.zeroPages = zeroPages
            self.discardedPages = discardedPages
            self.pageBytes = pageBytes
            self.wireBytes = wireBytes
            self.commitMs = commitMs
            self.fsyncMs = fsyncMs
            self.final = final
        }
    }

    /// One connection of the migration (receiver).
    public struct Connection: Codable, Sendable, Equatable {
        public var peer: String
        public var startedAt: String
        public var startMs: Double
        public var endMs: Double?
        /// The sender's last acknowledged chunk when it asked to resume.
        public var resumeFromChunk: UInt64?
        public var endState: String?
        public var error: String?
        public init(peer: String, startedAt: String, startMs: Double) {
            self.peer = peer
            self.startedAt = startedAt
            self.startMs = startMs
        }
    }

    public struct Restore: Codable, Sendable, Equatable {
        public var criuDumpMs: Double?
        public var transferMs: Double?
        public var restoreMs: Double?
        public var pagesCompleteMs: Double?
        public var criuFiles: Int?
        public var criuBytes: UInt64?
        public var restoredPid: Int32?
        public init() {}
    }
}

/// How much a report may hold: it is written by agents that a peer drives
/// (a receiver's chunks and connections are the sender's doing), so every list is capped.
public enum ReportLimits {
    public static let maxRounds = 4096
    public static let maxChunks = 8192
    public static let maxResumes = 1024
    public static let maxConnections = 1024
    public static let maxWarnings = 64
    public static let maxTextBytes = 1000
    /// A report file larger than this is refused on reading (8192 chunks are about 3 MiB).
    public static let maxFileBytes = 16 << 20

    /// Appends unless the list is full; counts what was left out.
    public static func append<T>(_ item: T, to list: inout [T], limit: Int, name: String, omitted: inout [String: Int]?) {
        if list.count < limit {
            list.append(item)
        } else {
            omitted = omitted ?? [:]
            omitted![name, default: 0] += 1
        }
    }

    public static func text(_ s: String) -> String {
        s.utf8.count <= maxTextBytes ? s : String(decoding: s.utf8.prefix(maxTextBytes), as: UTF8.self)
    }
}
