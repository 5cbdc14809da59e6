import Foundation
import HavenCatalog
import HavenCore
import HavenData

/// Prunes versions and collects garbage in a repository named by the plan.
enum RepositoryRunner {
    static func prune(_ a: PlannedAction, _ p: PruneJob, _ ctx: ExecutionContext) async throws -> ActionOutcome {
        let repo = try ctx.repository(p.repository)
        do {
            try repo.prune(p.version)
        } catch let e as DataError where e.code == .noSuchVersion {
            ctx.log(a, "version \(p.version) was already gone from the repository")
        }
        try ctx.catalog.forget(backup: p.version)
        return ActionOutcome("pruned \(p.version)")
    }

    static func gc(_ a: PlannedAction, _ g: GCJob, _ ctx: ExecutionContext) async throws -> ActionOutcome {
        let repo = try ctx.repository(g.repository)
        let window = TimeInterval(g.safetyWindowSeconds)
        let r = try await blocking { try repo.collectGarbage(safetyWindow: window, lockTimeout: 600) }
        return ActionOutcome("\(r.deletedChunks) chunks deleted, \(r.keptYoungChunks) young ones kept")
    }
}
