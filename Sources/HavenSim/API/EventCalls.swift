import Foundation
import XenAPI

extension SimPool {
    /// xapi's token: two zero-padded 20-digit numbers joined by a comma.
    func token(_ generation: Int64) -> String {
        let g = String(generation)
        return String(repeating: "0", count: 20 - g.count) + g + "," + String(repeating: "0", count: 20)
    }

    func parseToken(_ c: SimCall, _ t: String) throws -> Int64 {
        if t.isEmpty { return -1 }
        let first = t.split(separator: ",").first.map(String.init) ?? t
        guard let g = Int64(first) else { throw c.fail(XenAPIError.Code.eventFromTokenParseFailure, t) }
        return g
    }

    /// event.from(classes, token, timeout): blocks (releasing the lock) until something matching
    /// changed after the token, or the timeout passes; changes are coalesced per object.
    func eventFrom(_ c: SimCall) throws -> XenValue {
        let classes = c.params[0].stringArray
        let since = try parseToken(c, try c.string(1))
        let timeout = c.params[2].doubleValue ?? 0
        var wantAll = false
        var wantClasses = Set<String>()
        var wantObjects = Set<String>()
        for sub in classes {
            if sub == "*" {
                wantAll = true
            } else if let slash = sub.firstIndex(of: "/") {
                let cls = sub[..<slash].lowercased()
                guard Self.classes.contains(where: { $0.lowercased() == cls }) else {
                    throw c.fail(XenAPIError.Code.eventSubscriptionParseFailure, sub)
                }
                wantObjects.insert(String(sub[sub.index(after: slash)...]))
            } else {
                guard Self.classes.contains(where: { $0.lowercased() == sub.lowercased() }) else {
                    throw c.fail(XenAPIError.Code.eventSubscriptionParseFailure, sub)
                }
                wantClasses.insert(sub.lowercased())
            }
        }
        func wanted(_ cls: String, _ ref: String) -> Bool {
            wantAll || wantClasses.contains(cls.lowercased()) || wantObjects.contains(ref)
        }
        let deadline = Date().addingTimeInterval(max(0, timeout))
        while true {
            var events: [XenValue] = []
            for (ref, o) in db.objects where o.modified > since && wanted(o.cls, ref) {
                let op = since < 0 || o.created > since ? "add" : "mod"
                events.append([
                    "id": .string(String(o.modified)), "timestamp": "0.0", "class": .string(o.cls.lowercased()),
                    "operation": .string(op), "ref": .string(ref), "snapshot": .structure(wireRecord(ref)),
                ])
            }
            if since >= 0 {
                var seen = Set<String>()
                for t in db.tombstones.reversed() where t.deleted > since && t.created <= since && wanted(t.cls, t.ref) {
                    guard seen.insert(t.ref).inserted, db.objects[t.ref] == nil else { continue }
                    events.append([
                        "id": .string(String(t.deleted)), "timestamp": "0.0", "class": .string(t.cls.lowercased()),
                        "operation": "del", "ref": .string(t.ref),
                    ])
                }
            }
            if !events.isEmpty || Date() >= deadline {
                var counts: [String: XenValue] = [:]
                for cls in Self.classes where wantAll || wantClasses.contains(cls.lowercased()) {
                    counts[cls.lowercased()] = .int(Int64(db.byClass[cls]?.count ?? 0))
                }
                events.sort { ($0["id"]?.intValue ?? 0) < ($1["id"]?.intValue ?? 0) }
                return ["events": .array(events), "valid_ref_counts": .structure(counts), "token": .string(token(db.generation))]
            }
            _ = db.lock.wait(until: deadline)
        }
    }
}
