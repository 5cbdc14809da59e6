import CrashPoints
import Foundation

/// The disk formats `/export_raw_vdi` and `/import_raw_vdi` speak.
public enum DiskFormat: String, Sendable { case raw, vhd }

/// Errors from an HTTP data path: the status and, when xapi filled it, the task's error.
public struct DataPathError: Error, Sendable, CustomStringConvertible {
    public var status: Int
    public var path: String
    public var taskError: XenAPIError?
    public var description: String {
        "\(path) answered HTTP \(status)" + (taskError.map { ": \($0)" } ?? "")
    }
}

extension XenAPIClient {
    func dataURL(_ path: String, _ query: [(String, String)]) async throws -> String {
        let session = try await sessionReference()
        var c = URLComponents(string: baseURL + path)!
        c.queryItems = [URLQueryItem(name: "session_id", value: session)] + query.map { URLQueryItem(name: $0.0, value: $0.1) }
        return c.string!
    }

    /// Runs one transfer under a task of its own, so xapi reports errors and results into it.
    private func transfer(
        _ path: String, method: HTTPRequest.Method, query: [(String, String)], body: HTTPBody,
        sink: @escaping @Sendable (UnsafeRawBufferPointer) throws -> Void
    ) async throws -> String {
        let task = try await createTask(label: "haven \(path)")
        // Only the imports change a pool; an export is a read.
        let changes = method == .put
        if changes { CrashPoints.hit("before \(path)") }
        let url = try await dataURL(path, query + [("task_id", task.raw)])
        let http = self.http
        // The body closure is used only on the transfer thread, which this call waits for.
        nonisolated(unsafe) let body = body
        let head: HTTPResponseHead
        do {
            head = try await runBlocking {
                try http.perform(HTTPRequest(method: method, url: url, timeout: nil), body: body, sink: sink)
            }
        } catch {
            try? await destroy(task)
            throw error
        }
        var taskError: XenAPIError?
        var result = ""
        do {
            result = try await wait(for: task, timeout: 600)
        } catch let e as XenAPIError {
            taskError = e
        }
        try? await destroy(task)
        guard head.status == 200, taskError == nil else {
            throw DataPathError(status: head.status, path: path, taskError: taskError)
        }
        if changes { CrashPoints.hit("after \(path)") }
        return result
    }

    /// Streams a disk out: raw bytes, or a VHD (a delta against `base` when given).
    public func exportRawVDI(
        _ vdi: VDIRef, format: DiskFormat = .raw, base: VDIRef? = nil,
        sink: @escaping @Sendable (UnsafeRawBufferPointer) throws -> Void
    ) async throws {
        var q = [("vdi", vdi.raw), ("format", format.rawValue)]
        if let base { q.append(("base", base.raw)) }
        _ = try await transfer("/export_raw_vdi", method: .get, query: q, body: .none, sink: sink)
    }

    /// Streams a disk in: raw bytes from offset 0, or a VHD whose present blocks are written.
    /// With `.vhd` onto an existing VDI only the sectors the VHD marks present change (the rest
    /// of the VDI stays as it is) and CBT on the VDI records them: a delta made with
    /// DiskFormats' `VHDDelta` goes in as
    /// `let s = VHDDeltaStream(delta, read: …); importRawVDI(vdi, format: .vhd, length: delta.fileSize) { try s.read(into: $0) }`.
    public func importRawVDI(
        _ vdi: VDIRef, format: DiskFormat = .raw, length: Int64,
        read: @escaping (UnsafeMutableRawBufferPointer) throws -> Int
    ) async throws {
        _ = try await transfer(
            "/import_raw_vdi", method: .put, query: [("vdi", vdi.raw), ("format", format.rawValue)],
            body: .stream(length: length, read: read), sink: { _ in })
    }

    /// Exports a halted VM (or a snapshot) as XVA.
    public func exportXVA(_ vm: VMRef, sink: @escaping @Sendable (UnsafeRawBufferPointer) throws -> Void) async throws {
        _ = try await transfer("/export", method: .get, query: [("ref", vm.raw)], body: .none, sink: sink)
    }

    /// Imports an XVA onto an SR; returns the new VMs.
    public func importXVA(
        sr: SRRef, restore: Bool = false, length: Int64, read: @escaping (UnsafeMutableRawBufferPointer) throws -> Int
    ) async throws -> [VMRef] {
        var q = [("sr_id", sr.raw)]
        if restore { q.append(("restore", "true")) }
        let result = try await transfer("/import", method: .put, query: q, body: .stream(length: length, read: read), sink: { _ in })
        let value = (try? XMLRPC.parseValue(result)) ?? .string(result)
        return (value.arrayValue ?? [value]).compactMap(\.stringValue).filter { !$0.isEmpty }.map(VMRef.init)
    }
}
