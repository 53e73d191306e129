import Foundation
import MemhaulSystem

/// Why a report file could not be read or written.
public enum ReportFileError: Error, Equatable, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case tooLarge(path: String, limit: Int)
    /// The JSON stops early (a copy cut short, a full disk before the rename was atomic).
    case truncated(path: String, bytes: Int)
    case notJSON(path: String, reason: String)
    /// JSON, but not a report (a key missing or of the wrong type).
    case notAReport(path: String, reason: String)
    case newerSchema(path: String, version: Int)
    case unwritable(path: String, reason: String)

    public var description: String {
        switch self {
        case .unreadable(let p, let r): return "cannot read report \(p): \(r)"
        case .tooLarge(let p, let l): return "report \(p) is larger than \(l >> 20) MiB"
        case .truncated(let p, let n): return "report \(p) is truncated: its JSON ends early after \(n) bytes"
        case .notJSON(let p, let r): return "report \(p) is not JSON: \(r)"
        case .notAReport(let p, let r): return "\(p) is not a memhaul migration report: \(r)"
        case .newerSchema(let p, let v): return "report \(p) has schema version \(v); this memhaul reads up to \(MigrationReport.currentSchemaVersion)"
        case .unwritable(let p, let r): return "cannot write report \(p): \(r)"
        }
    }
}

/// The one JSON form of reports: snake_case keys, sorted, no escaped slashes.
public enum ReportJSON {
    public static func encode(_ report: MigrationReport) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes, .prettyPrinted]
        // A report is plain values: encoding cannot fail.
        var bytes = Array(try! encoder.encode(report))
        bytes.append(0x0A)
        return bytes
    }

    /// Decodes a report; `path` names it in errors.
    public static func decode(_ bytes: [UInt8], path: String = "report") throws(ReportFileError) -> MigrationReport {
        let data = Data(bytes)
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        do {
            let report = try decoder.decode(MigrationReport.self, from: data)
            guard report.schemaVersion <= MigrationReport.currentSchemaVersion else {
                throw ReportFileError.newerSchema(path: path, version: report.schemaVersion)
            }
            return report
        } catch let e as ReportFileError {
            throw e
        } catch {
            guard (try? JSONSerialization.jsonObject(with: data)) != nil else {
                if endsEarly(bytes) { throw .truncated(path: path, bytes: bytes.count) }
                throw .notJSON(path: path, reason: "\(error)")
            }
            throw .notAReport(path: path, reason: describe(error))
        }
    }

    public static func read(_ path: String) throws(ReportFileError) -> MigrationReport {
        let bytes: [UInt8]
        do {
            bytes = try SmallFile.read(path, limit: ReportLimits.maxFileBytes)
        } catch is SmallFile.TooLarge {
            throw .tooLarge(path: path, limit: ReportLimits.maxFileBytes)
        } catch {
            throw .unreadable(path: path, reason: "\(error)")
        }
        return try decode(bytes, path: path)
    }

    /// Writes atomically (temporary file, fsync, rename, fsync of the directory), mode 0600.
    public static func write(_ report: MigrationReport, to path: String) throws(ReportFileError) {
        do {
            try SmallFile.writeAtomically(path, encode(report))
        } catch {
            throw .unwritable(path: path, reason: "\(error)")
        }
    }

    /// Whether the text stops inside a string, object or array (or is empty):
    /// what a cut-short copy looks like, as opposed to text that is wrong.
    static func endsEarly(_ bytes: [UInt8]) -> Bool {
        var depth = 0, inString = false, escaped = false, seen = false
        for b in bytes {
            if inString {
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
                continue
            }
            switch b {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1; seen = true
            case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
            default: break
            }
            if depth < 0 { return false }
        }
        return !seen || inString || depth > 0
    }

    private static func describe(_ error: Error) -> String {
        switch error as? DecodingError {
        case .keyNotFound(let key, let context)?:
            return "missing \"\(path(context.codingPath + [key]))\""
        case .typeMismatch(_, let context)?, .valueNotFound(_, let context)?:
            return "\"\(path(context.codingPath))\" has the wrong type"
        case .dataCorrupted(let context)?:
            return "\"\(path(context.codingPath))\": \(context.debugDescription)"
        default:
            return "\(error)"
        }
    }

    private static func path(_ keys: [CodingKey]) -> String {
        keys.map { $0.intValue.map { "[\($0)]" } ?? snake($0.stringValue) }.joined(separator: ".")
    }

    private static func snake(_ s: String) -> String {
        var out = ""
        for c in s {
            if c.isUppercase { out += "_" + c.lowercased() } else { out.append(c) }
        }
        return out
    }
}
