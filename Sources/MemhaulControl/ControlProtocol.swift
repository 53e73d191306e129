import Foundation

/// A control-interface error: a code from `Protocol/control.md` and a message.
public struct ControlError: Error, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case badRequest = "bad_request"
        case unknownOp = "unknown_op"
        case notFound = "not_found"
        case conflict
        case tooLarge = "too_large"
        /// All control connection slots are taken.
        case busy
        case failed
        case `internal`
    }
    public var code: Code
    public var message: String
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { "\(code.rawValue): \(message)" }
}

/// One decoded request line.
public struct ControlRequest: @unchecked Sendable {  // JSON values are immutable Foundation objects
    public var id: Any?
    public var op: String
    public var args: [String: Any]

    public init(id: Any? = nil, op: String, args: [String: Any] = [:]) {
        self.id = id
        self.op = op
        self.args = args
    }

    /// Decodes one line; a non-object or missing `op` is `bad_request`.
    public static func decode(_ line: Data) throws(ControlError) -> ControlRequest {
        guard let object = try? JSONSerialization.jsonObject(with: line, options: [.fragmentsAllowed]),
              let dict = object as? [String: Any] else {
            throw ControlError(.badRequest, "request is not a JSON object")
        }
        guard let op = dict["op"] as? String else { throw ControlError(.badRequest, "missing \"op\"") }
        var args: [String: Any] = [:]
        if let a = dict["args"] {
            guard let ad = a as? [String: Any] else { throw ControlError(.badRequest, "\"args\" must be an object") }
            args = ad
        }
        return ControlRequest(id: dict["id"], op: op, args: args)
    }

    public func encode() -> Data {
        var dict: [String: Any] = ["op": op]
        if let id { dict["id"] = id }
        if !args.isEmpty { dict["args"] = args }
        return ControlJSON.line(dict, rounded: false)  // a request's numbers are the caller's, exactly
    }

    // Typed argument access with `bad_request` on a wrong type.
    public func string(_ key: String) throws(ControlError) -> String? {
        guard let v = args[key] else { return nil }
        guard let s = v as? String else { throw ControlError(.badRequest, "\"\(key)\" must be a string") }
        return s
    }
    public func number(_ key: String) throws(ControlError) -> Double? {
        guard let v = args[key] else { return nil }
        guard let n = v as? NSNumber, !isJSONBoolean(v) else {
            throw ControlError(.badRequest, "\"\(key)\" must be a number")
        }
        return n.doubleValue
    }
    public func int(_ key: String) throws(ControlError) -> Int? {
        guard let d = try number(key) else { return nil }
        guard d == d.rounded(), abs(d) < 1e15 else { throw ControlError(.badRequest, "\"\(key)\" must be an integer") }
        return Int(d)
    }
    public func bool(_ key: String) throws(ControlError) -> Bool? {
        guard let v = args[key] else { return nil }
        guard isJSONBoolean(v), let b = v as? Bool else { throw ControlError(.badRequest, "\"\(key)\" must be true or false") }
        return b
    }
    public func require<T>(_ value: T?, _ key: String) throws(ControlError) -> T {
        guard let value else { throw ControlError(.badRequest, "missing \"\(key)\"") }
        return value
    }
    /// Rejects keys outside `allowed`, so a typo is an error rather than ignored.
    public func onlyKeys(_ allowed: Set<String>) throws(ControlError) {
        if let bad = args.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw ControlError(.badRequest, "unknown parameter \"\(bad)\"")
        }
    }
}

// JSONSerialization decodes JSON numbers and booleans both as NSNumber (and
// `1 as? Bool` succeeds), so the boolean subclass is told apart by its type name.
private func isJSONBoolean(_ v: Any) -> Bool {
    if type(of: v) == Bool.self { return true }
    if let n = v as? NSNumber { return String(cString: n.objCType) == "c" && "\(type(of: v))".contains("Boolean") }
    return v is Bool
}

/// The one JSON output of memhaul (control replies, `migrate --json`,
/// `image inspect --json`, `track --json`; Protocol/control.md, "JSON"):
/// sorted keys, no escaped slashes, numbers rounded by what their key names.
public enum ControlJSON {
    /// One JSON object as a line (sorted keys, so output is stable for scripts).
    public static func line(_ object: [String: Any], rounded: Bool = true) -> Data {
        var data = text(object, rounded: rounded)
        data.append(0x0A)
        return data
    }

    /// One JSON object, without the newline. Output is `rounded`; requests are not.
    public static func text(_ object: [String: Any], rounded: Bool = true) -> Data {
        let value = rounded ? normalised(object, key: nil) : object
        return (try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    }

    /// Floating-point numbers rounded to what they mean (integers untouched).
    static func normalised(_ value: Any, key: String?) -> Any {
        switch value {
        case let d as [String: Any]: return d.reduce(into: [String: Any]()) { $0[$1.key] = normalised($1.value, key: $1.key) }
        case let a as [Any]: return a.map { normalised($0, key: key) }
        case _ where isJSONBoolean(value): return value
        case let n as NSNumber where n.doubleValue == n.doubleValue.rounded() && abs(n.doubleValue) < 1e15: return value
        case let d as Double: return rounded(d, key: key ?? "")
        default: return value
        }
    }

    /// `_ms`: 0.1 ms; `_s`, `_seconds`: 0.1 ms; rates (`_per_second`) and byte
    /// counts: whole units; anything else (ratios, percentages): 3 decimals.
    public static func rounded(_ value: Double, key: String) -> Double {
        guard value.isFinite else { return value }
        let digits: Double
        if key.hasSuffix("_ms") { digits = 1 }
        else if key.hasSuffix("_s") || key.hasSuffix("_seconds") { digits = 4 }
        else if key.hasSuffix("_per_second") || key.hasSuffix("_bytes") { digits = 0 }
        else { digits = 3 }
        let scale = pow(10, digits)
        return (value * scale).rounded() / scale
    }

    public static func success(id: Any?, result: [String: Any]) -> Data {
        var d: [String: Any] = ["ok": true, "result": result]
        if let id { d["id"] = id }
        return line(d)
    }

    public static func failure(id: Any?, _ error: ControlError) -> Data {
        var d: [String: Any] = ["ok": false, "error": ["code": error.code.rawValue, "message": error.message]]
        if let id { d["id"] = id }
        return line(d)
    }

    /// Any Encodable value as a JSON object for a result.
    public static func object<T: Encodable>(_ value: T) -> [String: Any] {
        let encoder = JSONEncoder()
        guard let data = try? encoder.encode(value),
              let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return [:] }
        return obj
    }
}
