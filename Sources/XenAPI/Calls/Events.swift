/// One change reported by event.from.
public struct XenEvent: Sendable {
    public enum Operation: String, Sendable { case add, mod, del }

    public var id: String
    public var className: String
    public var operation: Operation
    public var ref: String
    /// The object's record after the change (absent for `del`).
    public var snapshot: [String: XenValue]?
}

/// A reply of event.from: the events and the token to continue from.
public struct XenEventBatch: Sendable {
    public var events: [XenEvent]
    public var token: String
    public var validRefCounts: [String: Int64]
}

extension XenAPIClient {
    /// One event.from call: blocks up to `timeout` seconds until something in `classes` changes.
    /// `classes` holds class names (`"vm"`), `"*"`, or `"class/ref"`; an empty token starts
    /// with an `add` for every existing object.
    public func events(of classes: [String], token: String, timeout: Double) async throws -> XenEventBatch {
        let v = try await sendLong(.eventFrom, [.strings(classes), .string(token), .double(timeout)], timeout: timeout + 30)
        let events = (v["events"]?.arrayValue ?? []).compactMap { e -> XenEvent? in
            guard let op = XenEvent.Operation(rawValue: e["operation"]?.stringValue ?? "") else { return nil }
            return XenEvent(
                id: e["id"]?.stringValue ?? "", className: e["class"]?.stringValue ?? "", operation: op,
                ref: e["ref"]?.stringValue ?? "", snapshot: e["snapshot"]?.structValue)
        }
        return XenEventBatch(
            events: events, token: v["token"]?.stringValue ?? token,
            validRefCounts: (v["valid_ref_counts"]?.structValue ?? [:]).compactMapValues(\.intValue))
    }

    /// event.from as a stream: each element is one batch; cancelling the consuming task ends it.
    public nonisolated func eventStream(of classes: [String], from token: String = "", timeout: Double = 30)
        -> AsyncThrowingStream<XenEventBatch, any Error>
    {
        AsyncThrowingStream { continuation in
            let task = Task {
                var current = token
                do {
                    while !Task.isCancelled {
                        let batch = try await self.events(of: classes, token: current, timeout: timeout)
                        current = batch.token
                        if !batch.events.isEmpty { continuation.yield(batch) }
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }
}
