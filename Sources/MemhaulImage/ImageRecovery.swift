#if canImport(Glibc)
import Glibc
#endif

/// What `open` found and did to recover.
public enum ImageRecovery: Hashable, Sendable {
    /// Nothing to do: the last commit was fully applied.
    case clean
    /// Committed journals after the checkpoint were replayed, the last of
    /// `round` (the committed round); `ImageStore.replayedJournals` lists them.
    case reappliedJournal(round: UInt32)
    /// An uncommitted round's journal was found and discarded.
    case discardedJournal(round: UInt32)
}

/// What `ImageStore.open` does after a crash (Protocol/image.md, "Recovery"):
/// drop what no commit names, verify the committed journals whole, reconcile
/// the region files with the manifest and replay the journals in order. The
/// checkpoint that ends recovery is the store's. The read-only half (which
/// journals count, and whether the files are all there) is shared with
/// ``ImageReader``, which reads through those journals instead of replaying them.
enum Recovery {
    /// What recovery did: the outcome, the journals replayed, and the region
    /// files it changed (to be fsynced by the checkpoint).
    struct Result {
        var outcome: ImageRecovery
        var replayed: [UInt32]
        var dirty: Set<UInt32>
    }

    /// Steps 2–7 but the checkpoint, on a locked image whose manifest `m` is read and verified.
    static func run(_ paths: ImagePaths, _ m: Manifest, _ applier: JournalApplier) throws(ImageError) -> Result {
        let names = try listDirectory(paths.directory)
        try? unlinkIfPresent(paths.manifestTmp)
        var action = ImageRecovery.clean
        let listed = Set(m.journals.map(\.round))
        for name in names.sorted() {
            guard let round = ImagePaths.journalRound(ofName: name), !listed.contains(round) else { continue }
            // Older: checkpointed, its unlink was not durable. Newer: never committed.
            try unlinkIfPresent(paths.directory + "/" + name)
            if round > m.committedRound ?? 0 || m.committedRound == nil, action == .clean {
                action = .discardedJournal(round: round)
            }
        }
        let entries = try committedJournals(paths, m)
        // Verify every committed journal before changing anything.
        var journals: [ImageFile] = []
        for entry in entries {
            let path = paths.journal(entry.round)
            guard access(path, F_OK) == 0 else { throw .corrupt(file: path, reason: "committed journal missing") }
            let journal = try ImageFile(path: path, flags: O_RDONLY)
            try applier.verify(entry, journal)
            journals.append(journal)
        }
        // Undo in-place writes of an uncommitted round (and anything else outside
        // the manifest), size the files, replay the journals in order, then
        // punch the vacant ranges (in-place writes of an uncommitted round).
        var dirty = try applier.reconcileFiles(m)
        for (entry, journal) in zip(entries, journals) {
            dirty.formUnion(try applier.apply(entry, m: m, journal: journal, verifyFirst: false, layoutPass: false, replay: true))
        }
        // Vacant ranges hold no committed byte and no journal touches them:
        // holes again, whatever an uncommitted round wrote there in place.
        // Fsynced now, not at a checkpoint: a later round may commit these
        // pages as they are on disk (VacantSpace.after bridges its writes).
        for id in try applier.punch(m.vacant, m: m).sorted() {
            try ImageFile(path: paths.regionFile(id), flags: O_RDWR).fsync()
        }
        applier.dropDescriptors()
        for (id, name) in unreferencedFiles(try listDirectory(paths.directory), m, keepingFrom: nil) {
            dirty.remove(id)
            try unlinkIfPresent(paths.directory + "/" + name)
        }
        if let last = entries.last { action = .reappliedJournal(round: last.round) }
        return Result(outcome: action, replayed: entries.map(\.round), dirty: dirty)
    }

    /// The committed journals a recovery replays, ascending (each must exist:
    /// the caller checks as it opens them); with none, every region file the
    /// manifest names must exist (`corrupt`: a missing one would otherwise be
    /// recreated empty and read as zeros). Looks at directory entries only.
    static func committedJournals(_ paths: ImagePaths, _ m: Manifest) throws(ImageError) -> [JournalEntry] {
        var entries = m.journals
        if m.legacy {
            // 1.x: the committed journal may have been applied and removed already.
            entries = entries.filter { access(paths.journal($0.round), F_OK) == 0 }
        }
        if entries.isEmpty {
            for f in m.files where access(paths.regionFile(f.id), F_OK) != 0 {
                throw .corrupt(file: paths.regionFile(f.id), reason: "region file missing")
            }
        }
        return entries
    }

    /// Region files in `names` that `m` does not name; ids from `keepingFrom`
    /// on are kept (an open round's new files).
    static func unreferencedFiles(_ names: [String], _ m: Manifest, keepingFrom: UInt32?) -> [(id: UInt32, name: String)] {
        let live = Set(m.files.map(\.id))
        return names.compactMap { name in
            guard let id = ImagePaths.regionFileID(ofName: name), !live.contains(id) else { return nil }
            if let keepingFrom, id >= keepingFrom { return nil }
            return (id, name)
        }
    }
}
