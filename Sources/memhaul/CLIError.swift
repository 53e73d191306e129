/// A one-line failure: ArgumentParser prints `Error: <message>` and exits 1.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ message: String) { description = message }
}
