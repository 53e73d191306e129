import MemhaulReceiver

/// The receiver agent's operations.
public enum ReceiverControl {
    public static func handler(_ agent: ReceiverAgent) -> ControlServer.Handler {
        { (request: ControlRequest) throws(ControlError) -> [String: Any] in
            guard request.op == "status" else { throw ControlError(.unknownOp, "unknown operation \"\(request.op)\" (the receiver answers status)") }
            let sessions: [[String: Any]] = agent.sessionInfo.map { s in
                var d: [String: Any] = ["peer": s.peer, "state": s.state, "round": s.round, "pages": s.pages, "bytes": s.bytes]
                if let v = s.migration { d["migration"] = v }
                if let v = s.committedRound { d["committed_round"] = v }
                if let v = s.image { d["image"] = v }
                if let v = s.error { d["error"] = ["code": s.errorCode ?? "failed", "message": v] }
                if let v = s.restoredPID { d["restored_pid"] = v }
                if let v = s.sender { d["sender"] = ["common_name": v.commonName, "sha256": v.fingerprint] }
                return d
            }
            let l = agent.connections.limits
            return ["sessions": sessions, "images": agent.imagesRoot, "connections": agent.connections.openConnections,
                    "counters": ControlJSON.object(agent.counters.values),
                    "limits": ["handshake_timeout_s": l.handshakeTimeout.secondsValue, "frame_timeout_s": l.frameTimeout.secondsValue,
                               "max_connections": l.maxConnections, "max_connections_per_host": l.maxConnectionsPerHost,
                               "max_layout_regions": l.maxLayoutRegions, "max_layout_bytes": l.maxLayoutBytes,
                               "max_pages_per_round": l.maxPagesPerRound, "max_ranges_per_round": l.maxRangesPerRound,
                               "max_image_bytes": l.maxImageBytes, "max_images_per_sender": l.maxImagesPerSender],
                    "restore": agent.restore == nil ? "none" : "criu"]
        }
    }
}
