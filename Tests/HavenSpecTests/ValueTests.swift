import Foundation
import Testing

@testable import HavenSpec

@Suite struct DurationTests {
    @Test(arguments: [("90s", 90), ("30m", 1_800), ("24h", 86_400), ("7d", 604_800), ("2w", 1_209_600), ("1h30m", 5_400)])
    func parses(text: String, seconds: Int64) throws {
        #expect(try SpecDuration.parse(text).get().seconds == seconds)
    }

    @Test(arguments: ["", "90", "24 hours", "1y", "h", "1h1h", "99999999999999999999w"])
    func refuses(text: String) {
        #expect((try? SpecDuration.parse(text).get()) == nil)
    }

    @Test func canonicalText() {
        #expect(SpecDuration(seconds: 86_400).description == "24h")
        #expect(SpecDuration(seconds: 172_800).description == "2d")
        #expect(SpecDuration(seconds: 5_400).description == "1h30m")
        #expect(SpecDuration(seconds: 90_000).description == "25h")
        #expect(SpecDuration(seconds: 90).description == "1m30s")
    }
}

@Suite struct ByteSizeTests {
    @Test(arguments: [("128Mi", UInt64(128) << 20), ("4Gi", UInt64(4) << 30), ("1.5Gi", UInt64(3) << 29), ("500M", 500_000_000),
                      ("65536", 65_536), ("64Ki", 65_536)])
    func parses(text: String, bytes: UInt64) throws {
        #expect(try ByteSize.parse(text).get().bytes == bytes)
    }

    @Test(arguments: ["", "Mi", "128MB", "1.0000001Ki", "-1Ki", "99999999999Pi"])
    func refuses(text: String) {
        #expect((try? ByteSize.parse(text).get()) == nil)
    }

    @Test func canonicalText() {
        #expect(ByteSize.mebibytes(128).description == "128Mi")
        #expect(ByteSize(bytes: 1_000).description == "1000")
        #expect(ByteSize.gibibytes(4).description == "4Gi")
    }
}

@Suite struct CronTests {
    func utc(_ text: String) -> Date {
        let f = ISO8601DateFormatter()
        return f.date(from: text)!
    }

    @Test(arguments: ["30 1 * * *", "*/15 * * * *", "0 0 1,15 * *", "0 2 * * mon-fri", "0 0 * jan,jul sun", "@daily", "0 0 * * 7",
                      "5-10/2 * * * *"])
    func accepts(expression: String) {
        #expect((try? CronSchedule.parse(expression).get()) != nil)
    }

    @Test(arguments: ["", "* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8", "*/0 * * * *",
                      "5-1 * * * *", "@fortnightly", "a b c d e"])
    func refuses(expression: String) {
        #expect((try? CronSchedule.parse(expression).get()) == nil)
    }

    @Test func latestAndNextFireInUTC() throws {
        let cron = try CronSchedule.parse("30 1 * * *").get()
        let utc = TimeZone(identifier: "UTC")!
        #expect(cron.latestFire(notAfter: self.utc("2026-03-10T12:00:00Z"), in: utc) == self.utc("2026-03-10T01:30:00Z"))
        #expect(cron.latestFire(notAfter: self.utc("2026-03-10T01:00:00Z"), in: utc) == self.utc("2026-03-09T01:30:00Z"))
        #expect(cron.nextFire(after: self.utc("2026-03-10T01:30:00Z"), in: utc) == self.utc("2026-03-11T01:30:00Z"))
    }

    @Test func timeZoneShiftsTheSlot() throws {
        let cron = try CronSchedule.parse("30 1 * * *").get()
        let berlin = TimeZone(identifier: "Europe/Berlin")!
        // 01:30 in Berlin in winter is 00:30 UTC.
        #expect(cron.latestFire(notAfter: utc("2026-01-10T12:00:00Z"), in: berlin) == utc("2026-01-10T00:30:00Z"))
    }

    @Test func dayOfMonthOrDayOfWeekWhenBothRestricted() throws {
        // Vixie semantics: the 13th, or any Friday.
        let cron = try CronSchedule.parse("0 0 13 * fri").get()
        #expect(cron.matches(minute: 0, hour: 0, day: 13, month: 5, weekday: 2))
        #expect(cron.matches(minute: 0, hour: 0, day: 2, month: 5, weekday: 5))
        #expect(!cron.matches(minute: 0, hour: 0, day: 2, month: 5, weekday: 4))
    }

    @Test func sundayIsZeroOrSeven() throws {
        let a = try CronSchedule.parse("0 0 * * 7").get()
        #expect(a.matches(minute: 0, hour: 0, day: 1, month: 1, weekday: 0))
    }
}

@Suite struct AddressTests {
    @Test func ipv4AndIPv6() {
        #expect(IPAddress.parse("10.0.0.1")?.description == "10.0.0.1")
        #expect(IPAddress.parse("10.0.0.256") == nil)
        #expect(IPAddress.parse("010.0.0.1") == nil)
        #expect(IPAddress.parse("fe80::1")?.description == "fe80::1")
        #expect(IPAddress.parse("2001:db8:0:0:1:0:0:1")?.description == "2001:db8::1:0:0:1")
        #expect(IPAddress.parse("::ffff:10.0.0.1")?.value == (UInt128(0xffff) << 32) | 0x0a00_0001)
        #expect(IPAddress.parse("1::2::3") == nil)
    }

    @Test func rangesAndBlocks() throws {
        let r = try AddressRange.parse("10.0.0.10-20").get()
        #expect(r.description == "10.0.0.10-10.0.0.20")
        #expect(r.count == 11)
        let cidr = try AddressRange.parse("192.168.1.0/29").get()
        #expect(cidr.description == "192.168.1.1-192.168.1.6", "network and broadcast are left out")
        let host = try AddressRange.parse("192.168.1.7/32").get()
        #expect(host.count == 1)
        #expect(r.overlaps(try AddressRange.parse("10.0.0.20").get()))
        #expect(!r.overlaps(try AddressRange.parse("10.0.0.21-30").get()))
        #expect(!r.overlaps(try AddressRange.parse("::a").get()), "families never overlap")
        #expect((try? AddressRange.parse("10.0.0.1/33").get()) == nil)
        #expect((try? AddressRange.parse("10.0.0.9-10.0.0.1").get()) == nil)
    }
}

@Suite struct SuggestionTests {
    @Test func closeMisspellingsAreSuggested() {
        #expect(Suggestion.closest(to: "retension", in: ["retention", "repository"]) == "retention")
        #expect(Suggestion.closest(to: "keeplast", in: ["keepLast", "daily"]) == "keepLast")
        #expect(Suggestion.closest(to: "rpeository", in: ["retention", "repository"]) == "repository")
        #expect(Suggestion.closest(to: "colour", in: ["pool", "vms", "repository"]) == nil)
    }
}

@Suite struct CompressionTests {
    @Test func parses() throws {
        #expect(try Compression.parse("none").get() == .none)
        #expect(try Compression.parse("zstd").get() == .zstd(level: 3))
        #expect(try Compression.parse("zstd:19").get() == .zstd(level: 19))
        #expect((try? Compression.parse("zstd:0").get()) == nil)
        #expect((try? Compression.parse("gzip").get()) == nil)
    }
}
