import Foundation
import XenAPI

/// Retries a call while xapi answers with a transient error (VDI_IN_USE right after an unplug,
/// OTHER_OPERATION_IN_PROGRESS, …), with exponential backoff.
///
/// `TOO_BUSY` is resent by the client itself, for every call (reads and logins too, which do not
/// come through here); when it still reaches this point the pool has been busy for seconds, and
/// the backoff here gives it longer.
func withRetry<T>(attempts: Int = 6, initialDelay: Double = 0.25, on log: ((String) -> Void)? = nil,
                  _ body: () async throws -> T) async throws -> T {
    var delay = initialDelay
    for attempt in 1... {
        do {
            return try await body()
        } catch let e as XenAPIError where e.isTransient && attempt < attempts {
            log?("\(e) — retrying in \(String(format: "%.2g", delay))s (attempt \(attempt + 1) of \(attempts))")
            try await Task.sleep(for: .seconds(delay))
            delay *= 2
        }
    }
    fatalError("unreachable")
}
