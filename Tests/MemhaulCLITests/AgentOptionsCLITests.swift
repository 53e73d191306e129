import Foundation
import Testing
import MemhaulTestSupport

/// Bad limits and timeouts are refused before an agent starts, in one clear line.
@Suite(.serialized) struct AgentOptionsCLITests {
    func expectRefused(_ args: [String], _ what: String) throws {
        let r = try runMemhaul(args)
        #expect(r.status != 0)
        #expect(r.err.contains(what), "stderr: \(r.err)")
    }

    @Test func receiverLimitsAreChecked() throws {
        let images = temporaryDirectory("cli") + "/images"  // must not exist yet
        try expectRefused(["receive", "--images", images, "--insecure", "--max-connections", "0"], "--max-connections")
        try expectRefused(["receive", "--images", images, "--insecure", "--frame-timeout", "0"], "--frame-timeout")
        try expectRefused(["receive", "--images", images, "--insecure", "--peer-timeout", "0.1"], "--peer-timeout")
        try expectRefused(["receive", "--images", images, "--insecure", "--max-layout-regions", "0"], "--max-layout-regions")
        try expectRefused(["receive", "--images", images, "--insecure", "--max-pages-per-round", "0"], "--max-pages-per-round")
        try expectRefused(["receive", "--images", images, "--insecure", "--max-images-per-sender", "-1"], "--max-images-per-sender")
        #expect(!FileManager.default.fileExists(atPath: images), "nothing created for refused options")
    }

    @Test func commitChunkIsChecked() throws {
        try expectRefused(["migrate", "--pid", "1", "--to", "127.0.0.1:1", "--insecure", "--commit-chunk", "0"], "--commit-chunk")
    }
}
