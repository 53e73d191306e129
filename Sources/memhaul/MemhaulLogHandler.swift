import ArgumentParser
import Foundation
import Logging
import Synchronization

/// How log lines look on stderr.
enum LogFormat: String, ExpressibleByArgument, CaseIterable, Sendable {
    /// `2026-12-01T11:30:00.123Z info  receiver migration=m1: text key=value`
    case plain
    /// One JSON object a line: `{"component":…,"level":…,"message":…,"migration":…,"time":…}`.
    case json
    /// For journald (stderr is the journal stream): a `<N>` syslog priority
    /// prefix journald turns into the entry's priority, no date (the journal
    /// stamps each entry).
    case journal

    /// `journal` when stderr is systemd's journal stream (`$JOURNAL_STREAM`), else `plain`.
    static var automatic: LogFormat { ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil ? .journal : .plain }
}

/// memhaul's swift-log handler: every line carries a date (but in `journal`
/// form), a level, the component (the logger's label) and the metadata, the
/// migration id first. Lines go through ``StderrWriter``, so they never
/// collide with the live progress line.
struct MemhaulLogHandler: LogHandler {
    let component: String
    let format: LogFormat
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    init(component: String, format: LogFormat, level: Logger.Level) {
        self.component = component
        self.format = format
        self.logLevel = level
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        StderrWriter.shared.line(Self.render(format, date: Date(), level: event.level, component: component,
                                             message: event.message.description, metadata: all))
    }

    static func render(_ format: LogFormat, date: Date, level: Logger.Level, component: String,
                       message: String, metadata: Logger.Metadata) -> String {
        // The migration id first, the rest sorted: lines of one migration line up.
        let keys = metadata.keys.sorted { ($0 == "migration" ? 0 : 1, $0) < ($1 == "migration" ? 0 : 1, $1) }
        switch format {
        case .json:
            var object: [String: String] = ["time": timestamp(date), "level": level.rawValue, "component": component, "message": message]
            for key in keys where object[key] == nil { object[key] = metadata[key]!.description }
            let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
            return String(decoding: data, as: UTF8.self)
        case .plain, .journal:
            let fields = keys.map { "\($0)=\(metadata[$0]!)" }.joined(separator: " ")
            let head = fields.isEmpty ? component : component + " " + fields
            let levelName = level.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0)
            if format == .journal { return "<\(syslogPriority(level))>\(levelName)\(head): \(message)" }
            return "\(timestamp(date)) \(levelName)\(head): \(message)"
        }
    }

    /// RFC 3339, UTC, milliseconds.
    static func timestamp(_ date: Date) -> String {
        date.ISO8601Format(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
    }

    /// sd-daemon(3) priorities.
    static func syslogPriority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }
}

/// `--log-format` and `--log-level`, for the commands that log.
struct LoggingOptions: ParsableArguments {
    @Option(name: .customLong("log-format"), help: "plain, json or journal (default: journal under systemd, else plain).")
    var format: LogFormat?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var level: Logger.Level?

    /// Installs the handler (once per process) and makes `component`'s logger
    /// the one ``Log`` writes to.
    /// With `migration`, every line of the process names it.
    @discardableResult
    func bootstrap(component: String, migration: String? = nil, defaultLevel: Logger.Level = .info) -> Logger {
        Log.bootstrap(component: component, migration: migration, format: format ?? .automatic, level: level ?? defaultLevel)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// The process's logger. `Log.line` takes the plain text the library
/// modules' `log:` closures produce.
enum Log {
    private static let current = Mutex<Logger?>(nil)

    /// LoggingSystem.bootstrap may run once per process: the first call wins the format.
    static func bootstrap(component: String, migration: String? = nil, format: LogFormat, level: Logger.Level) -> Logger {
        current.withLock { current in
            if current == nil { LoggingSystem.bootstrap { MemhaulLogHandler(component: $0, format: format, level: level) } }
            var logger = Logger(label: component)
            logger.logLevel = level
            if let migration { logger[metadataKey: "migration"] = .string(migration) }
            current = logger
            return logger
        }
    }

    static var logger: Logger {
        if let logger = current.withLock({ $0 }) { return logger }
        return bootstrap(component: "memhaul", migration: nil, format: .automatic, level: .info)
    }

    static func line(_ message: String) { logger.textSink(level: .notice)(message) }
}

extension Logger {
    /// The library modules log plain text (`log:` closures, "receiver: migration
    /// ID …"): this sink strips the component prefix and lifts the migration id
    /// into metadata.
    func textSink(level: Logger.Level = .info) -> @Sendable (String) -> Void {
        let logger = self
        return { text in
            var message = Substring(text)
            if let colon = message.firstIndex(of: ":"), message[..<colon] == logger.label { message = message[message.index(after: colon)...].drop { $0 == " " } }
            var metadata: Logger.Metadata = [:]
            if logger[metadataKey: "migration"] == nil, let id = Self.migrationID(in: message) { metadata["migration"] = .string(id) }
            // "migration ID: text": the id is in the metadata now.
            if let id = metadata["migration"] ?? logger[metadataKey: "migration"], message.hasPrefix("migration \(id): ") {
                message = message.dropFirst("migration \(id): ".count)
            }
            logger.log(level: level, "\(message)", metadata: metadata)
        }
    }

    static func migrationID(in text: Substring) -> String? {
        guard let r = text.range(of: "migration ") else { return nil }
        let id = text[r.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "." || $0 == "_" || $0 == "-" }
        return id.isEmpty ? nil : String(id)
    }
}
