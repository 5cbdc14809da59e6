import Foundation
import HavenMover
import XenAPI

#if canImport(Glibc)
    import Glibc
#endif

/// A running appliance VM's guest: a `haven mover` process bound to the VM's address, the
/// directory it reads its xenstore keys and devices from, and the channel on which it reports
/// the blocks it writes (what tapdisk would see, for CBT).
final class ApplianceGuest: @unchecked Sendable {
    // @unchecked: `devices` is only touched while the pool's database lock is held; the process
    // and the report channel are set once before the guest is shared.
    let vm: String
    let address: String?
    let directory: URL
    var process: ChildProcess?
    /// Kernel device name → VDI ref of the disks the mover sees.
    var devices: [String: String] = [:]

    init(vm: String, address: String?, directory: URL) {
        self.vm = vm
        self.address = address
        self.directory = directory
    }

    var devicesDirectory: URL { directory.appendingPathComponent("devices") }
}

extension SimPool {
    /// The `haven` binary to run as an appliance's mover: `HAVEN_BIN`, this process when it is
    /// `haven`, else a `haven` next to it (the test runner sits beside it in `.build/debug`).
    static var moverExecutable: String {
        if let given = ProcessInfo.processInfo.environment["HAVEN_BIN"], !given.isEmpty { return given }
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        if (me as NSString).lastPathComponent == "haven" { return me }
        return ((me as NSString).deletingLastPathComponent as NSString).appendingPathComponent("haven")
    }

    /// Whether a VM was made from an appliance template. Lock held.
    func isAppliance(_ vm: String) -> Bool { db.field(vm, "__appliance")?.boolValue == true }

    var denyInbound: Bool { db.withLock { faults.contains { $0.kind == .denyInbound } } }

    // MARK: start and stop (database lock held; the waiting happens with it released)

    /// After VM.start: the guest's address (static from xenstore_data, else a DHCP lease), its
    /// disks, then its mover; the guest metrics report the address once the mover is up.
    func startAppliance(_ vm: String) {
        guard isAppliance(vm) else { return }
        let guest = prepareGuest(vm)
        let pool = self
        let deny = faults.contains { $0.kind == .denyInbound }
        _ = runReleasingLock(timeout: 15) { pool.launch(guest, denyInbound: deny) }
    }

    /// After a shutdown: the mover stops (the guest metrics stay, stale, as xapi leaves them).
    func stopAppliance(_ vm: String) {
        guard let guest = appliances.removeValue(forKey: vm) else { return }
        _ = runReleasingLock(timeout: 10) { Self.terminate(guest) }
    }

    /// Runs `job` on the supervisor thread and waits for it with the database lock released.
    /// Lock held.
    @discardableResult
    func runReleasingLock(timeout: Double, _ job: @escaping @Sendable () -> Void) -> Bool {
        let done = DoneFlag()
        nbdSupervisor.submit { [db] in
            job()
            db.withLock {
                done.value = true
                db.lock.broadcast()
            }
        }
        let deadline = Date().addingTimeInterval(timeout)
        while !done.value {
            if !db.lock.wait(until: deadline) { return done.value }
        }
        return true
    }

    /// The guest's address and directory. Lock held.
    private func prepareGuest(_ vm: String) -> ApplianceGuest {
        let f = db.get(vm, "VM") ?? [:]
        let uuid = f["uuid"]?.stringValue ?? vm
        let xs = (f["xenstore_data"]?.structValue ?? [:]).compactMapValues(\.stringValue)
        var address = xs[MoverXenstore.ip].flatMap { $0.isEmpty ? nil : $0 }
        if address == nil { address = leaseAddress(vm) }
        let guest = ApplianceGuest(vm: vm, address: address, directory: directory.appendingPathComponent("appliances/\(uuid)"))
        let fm = FileManager.default
        try? fm.removeItem(at: guest.directory)
        try? fm.createDirectory(at: guest.devicesDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        chmod(guest.directory.path, 0o700)
        // What the guest's boot script copies out of xenstore: one file per vm-data/haven key.
        for (key, value) in xs where key.hasPrefix(MoverXenstore.prefix) {
            let name = MoverXenstore.fileName(key)
            guard !name.isEmpty, !name.contains("/"), !name.hasPrefix(".") else { continue }
            let file = guest.directory.appendingPathComponent(name)
            try? value.write(to: file, atomically: true, encoding: .utf8)
            chmod(file.path, 0o600)
        }
        for vbd in f["VBDs"]?.stringArray ?? [] where db.field(vbd, "currently_attached")?.boolValue == true {
            attachDevice(guest, vbd: vbd)
        }
        appliances[vm] = guest
        return guest
    }

    /// Shows a plugged disk to the guest as `/dev/xvdX` (a link to the VDI's image), except
    /// the appliance's own system disk (userdevice 0). Lock held.
    func attachDevice(_ guest: ApplianceGuest, vbd: String) {
        guard db.field(vbd, "type")?.stringValue == "Disk", db.field(vbd, "userdevice")?.stringValue != "0",
            let device = db.field(vbd, "device")?.stringValue, !device.isEmpty,
            let vdi = db.field(vbd, "VDI")?.stringValue, let uuid = db.field(vdi, "uuid")?.stringValue
        else { return }
        let link = guest.devicesDirectory.appendingPathComponent(device).path
        let readOnly = guest.devicesDirectory.appendingPathComponent(".\(device).ro").path
        unlink(link)
        unlink(readOnly)
        // A VBD plugged RO gives the guest a read-only device.
        if db.field(vbd, "mode")?.stringValue == "RO" { FileManager.default.createFile(atPath: readOnly, contents: nil) }
        symlink(disks.path(uuid), link)
        guest.devices[device] = vdi
    }

    func detachDevice(_ guest: ApplianceGuest, vbd: String) {
        guard let device = db.field(vbd, "device")?.stringValue, guest.devices[device] != nil else { return }
        unlink(guest.devicesDirectory.appendingPathComponent(device).path)
        unlink(guest.devicesDirectory.appendingPathComponent(".\(device).ro").path)
        guest.devices[device] = nil
    }

    /// VBD.plug / VBD.unplug on a running appliance. Lock held.
    func applianceVBDChanged(_ vbd: String, plugged: Bool) {
        guard let vm = db.field(vbd, "VM")?.stringValue, let guest = appliances[vm] else { return }
        if plugged { attachDevice(guest, vbd: vbd) } else { detachDevice(guest, vbd: vbd) }
    }

    /// A DHCP lease for the VM's first VIF from its network's range: the same address as last
    /// time for the same MAC, else the lowest one nobody holds or reports. Lock held.
    private func leaseAddress(_ vm: String) -> String? {
        let vifs = (db.field(vm, "VIFs")?.stringArray ?? []).sorted { (db.field($0, "device")?.stringValue ?? "") < (db.field($1, "device")?.stringValue ?? "") }
        guard let vif = vifs.first, let net = db.field(vif, "network")?.stringValue, let mac = db.field(vif, "MAC")?.stringValue,
            let text = db.field(net, "__dhcp_range")?.stringValue, let range = try? DHCPRange(text, network: "")
        else { return nil }
        var leases = (db.field(net, "__dhcp_leases")?.structValue ?? [:]).compactMapValues(\.stringValue)
        if let mine = leases[mac] { return mine }
        var taken = Set(leases.values)
        for gm in db.refs("VM_guest_metrics") {
            for (_, v) in db.field(gm, "networks")?.structValue ?? [:] { if let ip = v.stringValue { taken.insert(ip) } }
        }
        for other in db.refs("VM") {
            if let ip = db.field(other, "xenstore_data")?.structValue?[MoverXenstore.ip]?.stringValue { taken.insert(ip) }
        }
        guard let ip = range.firstFree(excluding: taken) else { return nil }
        leases[mac] = ip
        db.set(net, "__dhcp_leases", .structure(leases.mapValues { .string($0) }))
        return ip
    }

    /// Gives back the leases of a VM's VIFs (VM.destroy). Lock held.
    func releaseLeases(_ vm: String) {
        for vif in db.field(vm, "VIFs")?.stringArray ?? [] {
            guard let net = db.field(vif, "network")?.stringValue, let mac = db.field(vif, "MAC")?.stringValue,
                var leases = db.field(net, "__dhcp_leases")?.structValue, leases[mac] != nil
            else { continue }
            leases[mac] = nil
            db.set(net, "__dhcp_leases", .structure(leases))
        }
    }

    /// The guest agent's report: a fresh VM_guest_metrics with the address. Lock held.
    func reportGuestMetrics(_ vm: String, address: String?) {
        deleteGuestMetrics(vm)
        var networks: [String: XenValue] = [:]
        if let address {
            networks["0/ip"] = .string(address)
            networks["0/ipv4/0"] = .string(address)
        }
        let gm = db.insert("VM_guest_metrics", [
            "os_version": ["name": "haven data-mover appliance", "distro": "haven"], "netbios_name": [:],
            "PV_drivers_version": ["major": "8", "minor": "3", "micro": "0"], "PV_drivers_up_to_date": true, "memory": [:], "disks": [:],
            "networks": .structure(networks), "services": [:], "other": ["feature-shutdown": "1"], "last_updated": Templates.now(),
            "other_config": [:], "live": true, "can_use_hotplug_vbd": "yes", "can_use_hotplug_vif": "yes", "PV_drivers_detected": true,
        ])
        db.set(vm, "guest_metrics", .string(gm))
    }

    /// xapi clears a VM's guest metrics when it starts (they may be a clone's) and when it is
    /// destroyed. Lock held.
    func deleteGuestMetrics(_ vm: String) {
        if let old = db.field(vm, "guest_metrics")?.stringValue, db.get(old, "VM_guest_metrics") != nil { db.remove(old) }
        if db.get(vm, "VM") != nil { db.set(vm, "guest_metrics", Templates.null) }
    }

    // MARK: the process (supervisor thread, no lock)

    /// Starts the mover and waits until it listens (or gives up), then reports the guest metrics.
    func launch(_ guest: ApplianceGuest, denyInbound: Bool) {
        var pair: [Int32] = [-1, -1]
        let haveChannel = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0
        let log = guest.directory.appendingPathComponent("mover.log").path
        let ready = guest.directory.appendingPathComponent("ready").path
        unlink(ready)
        if let address = guest.address {
            var args = ["mover", "--listen", "\(address):\(MoverProtocol.defaultPort)", "--state", guest.directory.path,
                        "--ready-file", ready, "--parent-pid", String(getpid())]
            // A DR site's firewall: nothing from outside the site gets in; haven (whose
            // connections come from 127.0.0.1 on loopback) still reaches its appliances.
            if denyInbound { args += ["--allow-inbound-from", "127.0.0.1"] }
            if haveChannel { args += ["--change-report-fd", "3"] }
            do {
                let p = try ChildProcess(executable: Self.moverExecutable, arguments: args, stderrPath: log, inherit: haveChannel ? [(parent: pair[1], child: Int32(3))] : [])
                guest.process = p
                for _ in 0..<1000 where access(ready, F_OK) != 0 && p.isRunning { usleep(10_000) }
            } catch {
                try? "\(error)\n".write(toFile: log, atomically: true, encoding: .utf8)
            }
        }
        if haveChannel {
            close(pair[1])
            let pool = self
            let fd = pair[0]
            let thread = Thread {
                ChangeReportChannel.serve(fd: fd) { device, blocks in pool.markMoverWrite(guest, device: device, blocks: blocks) }
                close(fd)
            }
            thread.name = "appliance change tracking"
            thread.start()
        }
        db.withLock {
            // The VM may have been shut down meanwhile: then nothing reports.
            guard appliances[guest.vm] === guest, db.field(guest.vm, "power_state")?.stringValue == "Running" else { return }
            reportGuestMetrics(guest.vm, address: guest.address)
        }
    }

    static func terminate(_ guest: ApplianceGuest) {
        guest.process?.stop()
        guest.process = nil
    }

    /// Blocks an appliance's mover wrote to one of its disks: marked changed for CBT and counted
    /// in the VDI's allocation, as a guest's writes are.
    private func markMoverWrite(_ guest: ApplianceGuest, device: String, blocks: BlockRange) -> Bool {
        db.withLock {
            guard let vdi = guest.devices[device], db.get(vdi, "VDI") != nil else { return false }
            markChanged(vdi, blocks: Array(Int(blocks.first)..<Int(blocks.end)))
            if let uuid = db.field(vdi, "uuid")?.stringValue { db.set(vdi, "physical_utilisation", .int(disks.allocated(uuid))) }
            return true
        }
    }

    // MARK: pool start, faults, stop (no lock held)

    /// Appliances that were running when the simulator last stopped get their movers back.
    func startRunningAppliances() {
        let running: [(ApplianceGuest, Bool)] = db.withLock {
            let deny = faults.contains { $0.kind == .denyInbound }
            return db.refs("VM").filter { isAppliance($0) && db.field($0, "power_state")?.stringValue == "Running" }
                .map { (prepareGuest($0), deny) }
        }
        for (guest, deny) in running { try? nbdSupervisor.run { [self] in launch(guest, denyInbound: deny) } }
    }

    /// Starts every running appliance's mover again with the current firewall (deny-inbound
    /// added or cleared).
    func restartAppliances() {
        let running: [(ApplianceGuest, Bool)] = db.withLock {
            let deny = faults.contains { $0.kind == .denyInbound }
            return appliances.values.map { ($0, deny) }
        }
        for (guest, deny) in running {
            try? nbdSupervisor.run { [self] in
                Self.terminate(guest)
                launch(guest, denyInbound: deny)
            }
        }
    }

    func stopAppliances() {
        let all: [ApplianceGuest] = db.withLock {
            defer { appliances.removeAll() }
            return Array(appliances.values)
        }
        for guest in all { Self.terminate(guest) }
    }
}

/// Set by a supervisor job, read by the waiter; both under the database lock.
final class DoneFlag: @unchecked Sendable {
    // @unchecked: only touched while the pool's database lock is held.
    var value = false
}
