import Foundation
import Testing
import XenAPI

@testable import HavenSim

/// VM.set_memory_limits, which appliance provisioning uses: a halted VM, limits in order.
@Suite struct MemoryLimitsTests {
    @Test func limitsAreSetOnAHaltedVMInOrderOnly() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let mib: Int64 = 1 << 20
        await #expect(throws: XenAPIError(code: "VM_BAD_POWER_STATE", parameters: [web.raw, "halted", "running"])) {
            try await c.setMemoryLimits(web, staticMin: 64 * mib, staticMax: 256 * mib, dynamicMin: 256 * mib, dynamicMax: 256 * mib)
        }
        try await c.cleanShutdown(web)
        await #expect(throws: XenAPIError(code: "MEMORY_CONSTRAINT_VIOLATION", parameters: [])) {
            try await c.setMemoryLimits(web, staticMin: 64 * mib, staticMax: 128 * mib, dynamicMin: 256 * mib, dynamicMax: 256 * mib)
        }
        try await c.setMemoryLimits(web, staticMin: 64 * mib, staticMax: 256 * mib, dynamicMin: 192 * mib, dynamicMax: 256 * mib)
        let r = try await c.record(web)
        #expect((r.memoryStaticMin, r.memoryStaticMax, r.memoryDynamicMin, r.memoryDynamicMax) == (64 * mib, 256 * mib, 192 * mib, 256 * mib))
        try await c.start(web)
    }
}
