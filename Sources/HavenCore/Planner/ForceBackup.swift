import Foundation

/// `haven backup now`: back up now, whatever the schedule says — every VM of a policy, or one VM
/// (by name or uuid) of the policies in scope. `full` reads every disk whole (no anchor is used).
public struct ForceBackup: Sendable, Codable, Hashable {
    /// Only this policy's backups are forced; nil: every policy in scope.
    public var policy: String?
    /// Only this VM (name or uuid); nil: every VM the policy selects.
    public var vm: String?
    public var full: Bool

    public init(policy: String? = nil, vm: String? = nil, full: Bool = false) {
        self.policy = policy
        self.vm = vm
        self.full = full
    }

    /// Whether the run looks at this VM at all (with `vm` set, the other VMs are left for later).
    func selects(_ vm: ObservedVM) -> Bool {
        guard let want = self.vm else { return true }
        return vm.name == want || vm.uuid.lowercased() == want.lowercased()
    }

    func forces(_ policy: String) -> Bool { self.policy == nil || self.policy == policy }

    var reason: String { "asked now (`haven backup now`), whatever the schedule" }
}

/// `haven failback POLICY VM`: the fail-back of one failed-over replica is planned whether or not
/// the policy says `reverse: true`.
public struct FailbackRequest: Sendable, Codable, Hashable {
    public var policy: String
    /// The source VM (name or uuid).
    public var vm: String

    public init(policy: String, vm: String) {
        self.policy = policy
        self.vm = vm
    }
}
