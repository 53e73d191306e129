import Foundation
import MemhaulSystem
import Synchronization

/// The one writer of stderr: log lines and, on a terminal, the live progress
/// line. A log line clears the live line, is printed, and the live line is
/// drawn again under it, so the two never glue together.
///
/// Writes happen on the writer's own queue: a stderr that blocks (a full pipe,
/// a stopped terminal) stalls that queue, never the migration (which may
/// hold its target frozen). What waits is bounded: past `maxPending` lines,
/// lines are dropped and counted; live updates only keep the newest.
final class StderrWriter: Sendable {
    static let shared = StderrWriter()

    let isTerminal = Terminal.isTerminal(STDERR_FILENO)
    private let queue = DispatchQueue(label: "memhaul.stderr")
    private struct State {
        var pending = 0
        var dropped = 0
        /// The newest live line, and whether a redraw of it is queued.
        var live: String?
        var redrawQueued = false
    }
    private let state = Mutex(State())
    private static let maxPending = 4096

    /// A permanent line (a newline is added).
    func line(_ text: String) {
        let accepted = state.withLock {
            guard $0.pending < Self.maxPending else { $0.dropped += 1; return false }
            $0.pending += 1
            return true
        }
        guard accepted else { return }
        queue.async { [self] in
            let (live, dropped) = state.withLock { s -> (String?, Int) in
                s.pending -= 1
                defer { s.dropped = 0 }
                return (s.live, s.dropped)
            }
            var out = isTerminal && live != nil ? "\r\u{1B}[K" : ""
            if dropped > 0 { out += "memhaul: \(dropped) log lines dropped (stderr was not read)\n" }
            out += text + "\n"
            if isTerminal, let live { out += live }
            emit(out)
        }
    }

    /// Replaces the live line (terminal only; nil removes it).
    func live(_ text: String?) {
        guard isTerminal else { return }
        let schedule = state.withLock { s -> Bool in
            s.live = text
            defer { s.redrawQueued = true }
            return !s.redrawQueued
        }
        guard schedule else { return }
        queue.async { [self] in
            let live = state.withLock { s -> String? in s.redrawQueued = false; return s.live }
            emit("\r\u{1B}[K" + (live ?? ""))
        }
    }

    /// Waits (bounded) until everything queued is written.
    func flush(timeoutSeconds: Double = 2) {
        let done = DispatchSemaphore(value: 0)
        queue.async { done.signal() }
        _ = done.wait(timeout: .now() + timeoutSeconds)
    }

    /// The terminal's width in columns (80 if unknown).
    var columns: Int { Terminal.columns(STDERR_FILENO) ?? 80 }

    private func emit(_ text: String) {
        try? FileHandle.standardError.write(contentsOf: Data(text.utf8))
    }
}
