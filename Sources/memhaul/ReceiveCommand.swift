import ArgumentParser
import Foundation
import MemhaulControl
import MemhaulImage
import MemhaulMetrics
import MemhaulCRIU
import MemhaulSession
import MemhaulSender
import MemhaulReceiver
import MemhaulTLS

/// `memhaul receive`: the receiver agent.
struct ReceiveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "receive",
        abstract: "Run the receiver agent: accept migrations and rebuild their images on disk.")

    @Option(help: "Address to listen on, HOST:PORT (port 0 = any free port, printed on start).")
    var listen: String = "127.0.0.1:7070"
    @Option(help: "Directory holding one image directory per migration (created 0700).")
    var images: String
    @Option(help: "Control socket (Unix, mode 0600).")
    var control: String = AgentDefaults.receiverControl
    @Option(help: "Seconds from accept to a complete HELLO (TLS handshake included); slower peers are cut.")
    var handshakeTimeout: Double = 10
    @Option(help: "Seconds within which the next frame must have arrived whole while the receiver waits for one; slower peers are cut.")
    var frameTimeout: Double = 120
    @Option(help: "Connections open at once; more are refused.")
    var maxConnections = 64
    @Option(help: "Connections open at once from one address; more are refused.")
    var maxConnectionsPerHost = 16
    @Option(help: "Regions in one round's layout (all its LAYOUT frames); more: ERROR limit-exceeded.")
    var maxLayoutRegions = 131_072
    @Option(help: "Bytes of one round's layout held before its last LAYOUT frame (K/M/G suffixes); more: ERROR limit-exceeded.")
    var maxLayoutBytes = ByteCount(32 << 20)
    @Option(help: "Pages with data in one round; more: ERROR limit-exceeded.")
    var maxPagesPerRound = 1 << 20
    @Option(help: "Zero and discard runs in one round; more: ERROR limit-exceeded.")
    var maxRangesPerRound = 1 << 20
    @Option(help: "Disk bytes of one migration's image (K/M/G/T suffixes; 0 = unlimited); more: ERROR limit-exceeded.")
    var maxImageBytes = ByteCount(1 << 40)
    @Option(help: "Image directories one sender certificate may own (0 = unlimited); a new migration beyond: ERROR limit-exceeded.")
    var maxImagesPerSender = 64
    @Option(name: .customLong("max-filled-gap"), help: "Pages: on a disk, gaps of at most this many pages between a dense batch's pages are written as zeros with them, so ext4 handles one extent instead of one per run (Protocol/image.md \"Filled gaps\"); 0 writes only page bytes. At most 256.")
    var maxFilledGapPages: UInt64 = ImageStore.defaultGapFillBytes / 4096
    @OptionGroup var restore: RestoreOptions
    @Flag(name: .customLong("no-readahead"), help: "With --restore criu: do not read a complete image into the page cache while the sender dumps (the restore then reads what is not cached itself).")
    var noReadahead = false
    @Flag(name: .customLong("bench-cold-image"), help: ArgumentHelp("Bench only: drop a complete image from the page cache before its restore, as if other work had evicted it.", visibility: .hidden))
    var benchColdImage = false
    @Option(help: "Authorisation policy: lines 'SENDER PATTERN...' (SENDER = certificate CN, sha256:FINGERPRINT or *; PATTERN = migration-id glob). Re-read on SIGHUP.")
    var authorize: String?
    @OptionGroup var transport: TransportOptions
    @OptionGroup var logging: LoggingOptions
    @OptionGroup var metrics: MetricsOptions

    func validate() throws {
        guard handshakeTimeout > 0, frameTimeout > 0 else { throw ValidationError("--handshake-timeout and --frame-timeout must be positive") }
        guard maxConnections > 0, maxConnectionsPerHost > 0 else { throw ValidationError("--max-connections and --max-connections-per-host must be at least 1") }
        guard maxLayoutRegions > 0, maxLayoutBytes.bytes > 0, maxLayoutBytes.bytes <= UInt64(Int.max), maxPagesPerRound > 0, maxRangesPerRound > 0 else {
            throw ValidationError("--max-layout-regions, --max-layout-bytes, --max-pages-per-round and --max-ranges-per-round must be at least 1")
        }
        guard maxFilledGapPages <= 256 else { throw ValidationError("--max-filled-gap must be 0…256 pages") }
        guard maxImagesPerSender >= 0 else { throw ValidationError("--max-images-per-sender must be 0 (unlimited) or more") }
        if !restore.enabled && (noReadahead || benchColdImage) { throw ValidationError("--no-readahead and --bench-cold-image need --restore criu") }
    }

    var limits: ReceiverLimits {
        var l = ReceiverLimits()
        l.handshakeTimeout = .milliseconds(Int64(handshakeTimeout * 1000))
        l.frameTimeout = .milliseconds(Int64(frameTimeout * 1000))
        l.maxConnections = maxConnections
        l.maxConnectionsPerHost = maxConnectionsPerHost
        l.maxLayoutRegions = maxLayoutRegions
        l.maxLayoutBytes = Int(maxLayoutBytes.bytes)
        l.maxPagesPerRound = maxPagesPerRound
        l.maxRangesPerRound = maxRangesPerRound
        l.maxImageBytes = maxImageBytes.bytes
        l.maxImagesPerSender = maxImagesPerSender
        l.maxFilledGapBytes = maxFilledGapPages * 4096
        return l
    }

    func run() throws {
        AgentSignals.ignoreBrokenPipes()
        logging.bootstrap(component: "receiver")
        transport.warnIfInsecure()
        if authorize != nil && transport.insecure { throw CLIError("--authorize needs TLS: an --insecure sender has no certificate to authorise") }
        let authorization = try authorize.map { path throws(AuthorizationPolicyError) in try ReceiverAuthorization(path: path) }
        let (host, port) = try MigrationRequest.parseDestination(listen.hasPrefix(":") ? "0.0.0.0" + listen : listen, allowAnyPort: true)
        if mkdir(images, 0o700) != 0 && errno != EEXIST {
            throw CLIError("cannot create image directory \(images): \(String(cString: strerror(errno)))")
        }
        let listener = try TCPListener(host: host, port: port, options: transport.tcpOptions)
        let agent = ReceiverAgent(listener: listener, imagesRoot: images, limits: limits, handshake: try transport.handshake(), log: Log.line)
        agent.authorization = authorization
        if restore.enabled {
            let runner = try restore.runner()
            agent.restore = .criu(runner: runner, extraArguments: restore.criuArgs, log: Log.line)
            agent.restore!.readsAhead = !noReadahead
            agent.testHooks.coldImage = benchColdImage
            Log.line("receiver: restores processes with \(runner.path) (CRIU \(runner.version))")
        }
        if !transport.insecure {
            Log.line(authorization.map { "receiver: authorisation policy \($0.path): \($0.current.rules.count) rules" }
                ?? "receiver: no --authorize policy: any sender with a certificate from the CA may start a migration (each image is bound to its first sender)")
        }
        let server = try ControlServer(path: control, handler: ReceiverControl.handler(agent))
        defer { server.close() }
        let metricsListener = try metrics.start(ReceiverMetrics(agent: agent))
        defer { metricsListener?.close() }
        Log.line("receiver: listening on \(listener.localDescription) (\(transport.insecure ? "plaintext" : "mutual TLS 1.3")), images in \(images), control \(control)")
        // SIGHUP re-reads the policy (also without one: a reload never kills a receiver);
        // SIGINT/SIGTERM end the agent cleanly (socket file removed). Handled by
        // the one sigwait thread (ShutdownSignals), set up before READY.
        ShutdownSignals.onSignal { sig in
            if sig == SIGHUP { return ReceiverAuthorization.hangUp(authorization, log: Log.line) }
            Log.line("stopping on \(ShutdownSignals.name(sig))")
            SystemdNotify.stopping()
            agent.close()
            server.close()
            ShutdownSignals.exitOnce(0)
        }
        Console.announce("listening \(listener.localDescription)")
        SystemdNotify.ready(status: "listening on \(listener.localDescription), control \(control)")
        agent.serve()
    }
}

/// `memhaul sender`: the long-lived sender agent, driven through its control socket.
struct SenderCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sender",
        abstract: "Run the sender agent: start and follow migrations on request (see `memhaul ctl`).")

    @Option(help: "Control socket (Unix, mode 0600).")
    var control: String = AgentDefaults.senderControl
    @Flag(name: .customLong("criu-restore"), help: "Accept migrate requests with restore: criu (CRIU ≥ 4.1 on this host and the receiver's).")
    var criuRestore = false
    @Option(name: .customLong("criu"), help: "The criu binary; default $MEMHAUL_CRIU, then criu on PATH.")
    var criuPath: String?
    @Option(name: .customLong("criu-arg"), help: "An extra argument for criu dump; repeatable.")
    var criuArgs: [String] = []
    @Option(name: .customLong("criu-dir"), help: "Where dumps are written (<dir>/<migration id>/; removed after success).")
    var criuDir: String = NSTemporaryDirectory() + "memhaul-criu"
    @OptionGroup var transport: TransportOptions
    @OptionGroup var logging: LoggingOptions
    @OptionGroup var metrics: MetricsOptions

    func run() throws {
        AgentSignals.ignoreBrokenPipes()
        logging.bootstrap(component: "sender")
        transport.warnIfInsecure()
        // Cgroup throttles of an agent that died by SIGKILL (ThrottleLeftovers).
        for line in ThrottleLeftovers.restoreAbandoned() { Log.line("sender: \(line)") }
        var restoreStep: SenderControl.RestoreStepFactory?
        if criuRestore {
            let runner = try RestoreOptions.openRunner(criuPath)
            Log.line("sender: restores with \(runner.path) (CRIU \(runner.version))")
            let (args, dir) = (criuArgs, criuDir)
            restoreStep = { r in
                var options = CRIUOptions()
                options.shellJob = r.shellJob
                options.tcp = CRIUTCPMode(rawValue: r.tcp) ?? .none
                options.extraArguments = args
                var handOver = CRIUHandOver(runner: runner, options: options, workRoot: dir, log: Log.line)
                handOver.route = CRIURoute(rawValue: r.route) ?? .defaultRoute  // SenderControl checked it
                return handOver.step
            }
        }
        let senderControl = SenderControl(connect: try transport.connector(), restoreStep: restoreStep, log: Log.line)
        let server = try ControlServer(path: control) { (r: ControlRequest) throws(ControlError) -> [String: Any] in
            try senderControl.handle(r)
        }
        let metricsListener = try metrics.start(SenderMetrics(migrations: { senderControl.statuses }))
        defer { metricsListener?.close() }
        Log.line("sender: control socket \(control) (\(transport.insecure ? "plaintext" : "mutual TLS 1.3") to receivers)")
        // SIGINT/SIGTERM/SIGHUP: no new work, cancel the migrations (each thaws
        // and untracks its target), release whatever is still held after the
        // grace period, exit (non-zero when migrations had to be cancelled).
        ShutdownSignals.onTerminate { sig in
            SystemdNotify.stopping()
            server.close()
            let (cancelled, unfinished) = senderControl.shutdown(timeoutSeconds: ShutdownSignals.graceSeconds)
            let forced = TargetRelease.shared.releaseAll()
            if !unfinished.isEmpty || !forced.isEmpty {
                Log.line("sender: \(unfinished.joined(separator: ", ")) did not end within \(Int(ShutdownSignals.graceSeconds)) s; released PID \(forced.map(String.init).joined(separator: ", ")) directly")
            }
            if cancelled.isEmpty {
                Log.line("sender: stopping on \(ShutdownSignals.name(sig)); no migration was running")
                return 0
            }
            Log.line("sender: stopped by \(ShutdownSignals.name(sig)); cancelled migration \(cancelled.joined(separator: ", ")); their targets run on, untracked")
            return 128 + sig
        }
        Console.announce("ready \(control)")
        SystemdNotify.ready(status: "control socket \(control)")
        while true { pause() }
    }
}

/// Default control sockets, one place: each agent has its own runtime
/// directory (systemd removes a unit's RuntimeDirectory= when that unit stops,
/// so a shared one would take the other agent's socket with it).
enum AgentDefaults {
    static let senderControl = "/run/memhaul-sender/sender.sock"
    static let receiverControl = "/run/memhaul-receiver/receiver.sock"
}

/// What every long-running command does first.
enum AgentSignals {
    /// A peer that hangs up before reading (a control client, a receiver, a
    /// sender) must cost one connection, not the process: a write to it fails
    /// with EPIPE instead of raising SIGPIPE, whose default action ends the
    /// agent (status 141). Called first by every long-running command
    /// (`receive`, `sender`, `migrate`); sockets are also written with
    /// MSG_NOSIGNAL, this covers any path that is not.
    static func ignoreBrokenPipes() {
        signal(SIGPIPE, SIG_IGN)
    }
}

enum Console {
    /// One line on stdout, flushed at once: scripts and tests wait for it.
    static func announce(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }
}
