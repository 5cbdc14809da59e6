import Foundation
import HavenCore
import Testing

@testable import HavenDaemon

/// The work queue's rules, driven with an injected clock (plain dates): no sleeping, no wall clock.
@Suite struct WorkQueueTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    func at(_ s: Double) -> Date { t0.addingTimeInterval(s) }
    func key(_ vm: String, pool: String = "lab", policy: String = "daily") -> WorkKey { WorkKey(.backup, pool: pool, policy: policy, vm: vm) }

    @Test func aKeyIsNeverHandedToTwoWorkersAndEventsMeanwhileRunItOnceMore() {
        var q = WorkQueueState(limits: ["lab": 4])
        let web = key("web")
        q.add(web, now: t0)
        #expect(q.next(now: t0)?.key == web)
        // Three events while it is processed: not handed out again, one more run once done.
        q.add(web, now: at(1))
        q.add(web, now: at(2))
        q.add(web, now: at(3))
        #expect(q.next(now: at(3)) == nil, "a key being processed is never handed to a second worker")
        #expect(q.depth == 0)
        q.done(web, now: at(4))
        #expect(q.depth == 1)
        #expect(q.next(now: at(4))?.key == web)
        q.done(web, now: at(5))
        #expect(q.next(now: at(5)) == nil, "coalesced: exactly one more run")
    }

    @Test func addsOfAQueuedKeyAreCoalesced() {
        var q = WorkQueueState()
        for i in 0..<5 { q.add(key("web"), now: at(Double(i))) }
        #expect(q.depth == 1 && q.adds == 1)
        let (_, waited) = q.next(now: at(10))!
        #expect(waited == 10, "queued since the first add")
    }

    @Test func failuresBackOffExponentiallyPerKeyFrom5msTo1000s() {
        var q = WorkQueueState()
        let web = key("web"), db = key("db")
        var expected = 0.005
        var now = t0
        for _ in 0..<6 {
            q.add(web, now: now)
            #expect(q.next(now: now)?.key == web)
            q.done(web, now: now)
            let delay = q.addRateLimited(web, now: now)
            #expect(abs(delay - expected) < 1e-9)
            #expect(q.nextWake == now.addingTimeInterval(delay))
            #expect(q.next(now: now.addingTimeInterval(delay / 2)) == nil, "not before its backoff")
            now = now.addingTimeInterval(delay)
            #expect(q.next(now: now)?.key == web)
            q.done(web, now: now)
            expected *= 2
        }
        #expect(q.requeues(web) == 6 && q.retries == 6)
        #expect(q.requeues(db) == 0, "per key")
        #expect(WorkQueueState.backoff(failures: 30) == 1000, "capped at 1000 s")
        #expect(WorkQueueState.backoff(failures: 0) == 0.005)
        q.forget(web)
        #expect(q.addRateLimited(web, now: now) == 0.005, "a success starts the backoff over")
    }

    @Test func poolLimitsHoldAndOtherPoolsGoOn() {
        var q = WorkQueueState(limits: ["lab": 2, "dr": 1])
        let a = key("a"), b = key("b"), c = key("c"), x = key("x", pool: "dr")
        for k in [a, b, c, x] { q.add(k, now: t0) }
        #expect(q.next(now: t0)?.key == a)
        #expect(q.next(now: t0)?.key == b)
        #expect(q.next(now: t0)?.key == x, "lab is at its limit of 2; dr goes on")
        #expect(q.next(now: t0) == nil)
        q.done(a, now: at(1))
        #expect(q.next(now: at(1))?.key == c)
    }

    @Test func aReplicationKeyCountsOnBothItsPools() {
        var q = WorkQueueState(limits: ["lab": 1, "dr": 1], targets: ["offsite": "dr"])
        let sync = WorkKey(.replication, pool: "lab", policy: "offsite", vm: "web")
        let drBackup = key("y", pool: "dr")
        q.add(sync, now: t0)
        q.add(drBackup, now: t0)
        #expect(q.pools(of: sync) == ["lab", "dr"])
        #expect(q.next(now: t0)?.key == sync)
        #expect(q.next(now: t0) == nil, "dr is busy with the sync")
        q.done(sync, now: at(1))
        #expect(q.next(now: at(1))?.key == drBackup)
    }

    @Test func housekeepingNeverWaitsBehindALongBackupAndKnowsWhatIsBusy() {
        var q = WorkQueueState(limits: ["lab": 1])
        let a = key("a"), b = key("b"), hk = WorkKey.housekeeping("lab")
        q.add(a, now: t0)
        #expect(q.next(now: t0)?.key == a)
        q.add(b, now: t0)
        q.add(hk, now: t0)
        #expect(q.next(now: t0)?.key == hk, "b waits for the pool's one slot; the housekeeping does not")
        #expect(q.busyKeys == [a], "what the housekeeping leaves alone")
        q.add(hk, now: t0)
        #expect(q.next(now: t0) == nil, "one housekeeping per pool at a time, as any key")
        q.done(a, now: at(1))
        #expect(q.next(now: at(1))?.key == b)
    }

    @Test func keysThroughOneAppliancePoolRunOneAtATime() {
        var q = WorkQueueState(limits: ["lab": 4])
        q.appliancePools = ["abd-daily": ["movers"]]
        let a = key("a", policy: "abd-daily"), b = key("b", policy: "abd-daily"), c = key("c")
        for k in [a, b, c] { q.add(k, now: t0) }
        #expect(q.next(now: t0)?.key == a)
        #expect(q.next(now: t0)?.key == c, "b waits for the AppliancePool; a key without appliances goes on")
        #expect(q.next(now: t0) == nil)
        q.done(a, now: at(1))
        #expect(q.next(now: at(1))?.key == b)
    }

    @Test func timersWakeExactlyWhenDueAndTheEarliestWins() {
        var q = WorkQueueState()
        let web = key("web"), db = key("db")
        q.addAfter(web, at: at(86_400), now: t0)
        q.addAfter(db, at: at(3_600), now: t0)
        #expect(q.nextWake == at(3_600))
        q.addAfter(web, at: at(90_000), now: t0)
        q.addAfter(db, at: at(60), now: t0)
        #expect(q.nextWake == at(60), "an earlier time replaces a later one, never the reverse")
        #expect(q.next(now: at(59.999)) == nil)
        #expect(q.next(now: at(60))?.key == db)
        q.done(db, now: at(61))
        #expect(q.nextWake == at(86_400))
        #expect(q.next(now: at(86_399)) == nil)
        #expect(q.next(now: at(86_400))?.key == web)
        #expect(q.nextWake == nil, "idle: no timer, the dispatcher sleeps until something happens")
    }

    @Test func aRemovedKeyLosesItsTimerAndRetries() {
        var q = WorkQueueState()
        let web = key("web")
        q.addAfter(web, at: at(10), now: t0)
        q.remove(web)
        #expect(q.nextWake == nil && q.next(now: at(20)) == nil)
        q.add(web, now: t0)
        q.remove(web)
        #expect(q.depth == 0)
    }

    @Test func unfinishedWorkAndTheLongestRunningAreMeasuredFromTheClock() {
        var q = WorkQueueState(limits: ["lab": 3])
        q.add(key("a"), now: t0)
        _ = q.next(now: t0)
        q.add(key("b"), now: t0)
        _ = q.next(now: at(5))
        #expect(q.longestRunning(now: at(10)) == 10)
        #expect(q.unfinishedWork(now: at(10)) == 15)
        #expect(q.done(key("a"), now: at(12)) == 12)
        #expect(q.longestRunning(now: at(12)) == 7)
    }
}
