import Foundation
import HavenCore
import HavenMover
import XenAPI

/// method abd: one disk copied from appliance to appliance. The source snapshot's VDI is plugged
/// (read-only) into an appliance of the source-side AppliancePool, the replica's VDI (read-write)
/// into one of the target side's; haven hands each mover a token for its own side and one for the
/// peer, then one mover connects to the other — the source's (push) or the target's (pull) — and
/// the blocks never pass through haven. Both VBDs come out again whatever happens.
extension ReplicateRun {
    func copyThroughAppliances(_ route: ApplianceRoute, disk: ReplicaDiskJob, snapVDI: VDIRef, snapInfo: VDIRecord, replicaVDI: VDIRef,
                               blocks: [Int], total: Int) async throws -> CopyCounters {
        let me = self
        let sourceSide = ApplianceDisks(client: source, catalog: ctx.catalog, instance: ctx.instance, pool: sourcePool, log: { me.log($0) })
        let targetSide = ApplianceDisks(client: target, catalog: ctx.catalog, instance: ctx.instance, pool: job.targetPool, log: { me.log($0) })
        let replicaUUID = try await target.record(replicaVDI).uuid
        // The two AppliancePools are always leased in the order of their names: two syncs (one may
        // replicate the other way round) never each hold one side while waiting for the other.
        let sourceFirst = route.source < route.target
        let (first, second) = sourceFirst ? (route.source, route.target) : (route.target, route.source)
        return try await ctx.appliances.withLease(first) { l1 in
            try await me.ctx.appliances.withLease(second) { l2 in
                let (sa, ta) = sourceFirst ? (l1.appliance, l2.appliance) : (l2.appliance, l1.appliance)
                try await sourceSide.clearLeftovers(sa)
                try await targetSide.clearLeftovers(ta)
                guard let sKey = me.ctx.state.readApplianceKey(pool: sa.pool, uuid: sa.uuid),
                      let tKey = me.ctx.state.readApplianceKey(pool: ta.pool, uuid: ta.uuid) else {
                    throw EngineError(.action, "\(sa.name), \(ta.name)", "haven has no token key for appliance \(sa.name) or \(ta.name) (state directory); remove it and let haven provision a new one")
                }
                let from = try await sourceSide.plug(snapVDI, vdiUUID: snapInfo.uuid, into: sa, readOnly: true, now: me.ctx.now())
                var to: PluggedDisk?
                do {
                    to = try await targetSide.plug(replicaVDI, vdiUUID: replicaUUID, into: ta, readOnly: false, now: me.ctx.now())
                    let counters = try await me.relay(route, disk: disk, from: from, sourceKey: sKey, to: to!, targetKey: tKey, snapInfo: snapInfo,
                                                      blocks: blocks, total: total)
                    await targetSide.unplug(to!)
                    await sourceSide.unplug(from)
                    return counters
                } catch {
                    let plugged = to
                    await Task.detached {
                        if let plugged { await targetSide.unplug(plugged) }
                        await sourceSide.unplug(from)
                    }.value
                    throw error
                }
            }
        }
    }

    private func relay(_ route: ApplianceRoute, disk: ReplicaDiskJob, from: PluggedDisk, sourceKey: [UInt8], to: PluggedDisk, targetKey: [UInt8],
                       snapInfo: VDIRecord, blocks: [Int], total: Int) async throws -> CopyCounters {
        let jobID = "replicate \(snapInfo.uuid)"
        let sourceMover = try MoverSeam.transferClient(from.appliance, tokenKey: sourceKey, job: jobID, scope: .read)
        let targetMover = try MoverSeam.transferClient(to.appliance, tokenKey: targetKey, job: jobID, scope: .write)
        // haven sees both disks before either mover is asked to move a block.
        let seenFrom = try await MoverSeam.waitForDisk(sourceMover, device: from.device, appliance: from.appliance.name)
        let seenTo = try await MoverSeam.waitForDisk(targetMover, device: to.device, appliance: to.appliance.name)
        guard seenFrom.size == seenTo.size else {
            throw EngineError(.action, disk.name, "the snapshot's disk has \(seenFrom.size) bytes on \(from.appliance.name), the replica's \(seenTo.size) on \(to.appliance.name)")
        }
        var blocks = blocks
        if job.mode == .full && blocks.count == total {
            // No CBT anchor to say what changed: both movers hash their disk in runs of 1 MiB and only
            // the runs that differ travel (a hash needs a read token on the target side too).
            let per = 16
            let ours = try await sourceMover.hashRanges(disk: from.device, blocksPerHash: per)
            let theirs = try await MoverSeam.transferClient(to.appliance, tokenKey: targetKey, job: jobID, scope: .read)
                .hashRanges(disk: to.device, blocksPerHash: per)
            let known = Dictionary(theirs.map { ($0.range, $0.sha256) }, uniquingKeysWith: { a, _ in a })
            let differ = ours.filter { known[$0.range] != $0.sha256 }
            blocks = differ.flatMap { Array(Int($0.range.first)..<Int($0.range.end)) }.filter { $0 < total }
            log("disk \(disk.key): resync by comparison: \(differ.count) of \(ours.count) runs of \(per) blocks differ")
            if blocks.isEmpty { return CopyCounters() }
        }
        let all = blocks.count == total
        let bitmap: HavenMover.ChangedBlocks? = all ? nil : HavenMover.ChangedBlocks(blocks: blocks.map(Int64.init))
        // A new replica disk reads as zeros: zero blocks need not travel.
        let zeroed = job.mode == .initial
        let clock = ContinuousClock.now
        let summary: TransferSummary
        func side(_ p: PluggedDisk) -> String { "\(p.appliance.name) (\(p.appliance.address), \(p.device))" }
        let path = route.direction == .push ? "push: \(side(from)) → \(side(to))" : "pull: \(side(to)) ← \(side(from))"
        log("disk \(disk.key): \(blocks.count) of \(total) blocks of 64 KiB, \(path)")
        do {
            switch route.direction {
            case .push:
                let peer = try MoverSeam.peer(to.appliance, tokenKey: targetKey, job: jobID, scope: .write, disk: to.device)
                summary = try await sourceMover.push(disk: from.device, bitmap: bitmap, to: peer, targetIsZeroed: zeroed)
            case .pull:
                let peer = try MoverSeam.peer(from.appliance, tokenKey: sourceKey, job: jobID, scope: .read, disk: from.device)
                summary = try await targetMover.pull(disk: to.device, bitmap: bitmap, from: peer, targetIsZeroed: zeroed)
            }
        } catch let e as MoverError where e.code == .peerUnreachable || e.code == .peerFailed || e.code == .connection {
            let (connecting, listening) = route.direction == .push ? (from.appliance, to.appliance) : (to.appliance, from.appliance)
            let (what, fix) = MoverSeam.explain(e, host: listening.address, port: MoverSeam.port, from: "\(connecting.name) (\(connecting.address))")
            throw EngineError(.action, disk.name, "\(route.direction.rawValue) of disk \(disk.key) failed: \(what)" + (fix.map { "; fix: \($0)" } ?? ""))
        }
        let d = (ContinuousClock.now - clock).components
        let seconds = String(format: "%.3f", Double(d.seconds) + Double(d.attoseconds) / 1e18)
        log("disk \(disk.key): \(summary.blocks) blocks moved appliance to appliance in \(seconds) s (\(summary.bytes) data bytes, \(summary.zeroBlocks) zero blocks"
            + (summary.resumes > 0 ? ", resumed \(summary.resumes) time\(summary.resumes == 1 ? "" : "s")" : "") + ")")
        var counters = CopyCounters()
        counters.read = summary.bytes
        counters.written = summary.bytes
        counters.sent = summary.bytes
        return counters
    }
}
