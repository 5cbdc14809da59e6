/// A value written as text in YAML (a duration, a size, a cron expression…): parsed with a
/// message a user can act on, and encoded back as its canonical text.
public protocol TextValue: Codable, CustomStringConvertible {
    static func parse(_ text: String) -> Result<Self, ValueError>
}

extension TextValue {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        switch Self.parse(text) {
        case .success(let v): self = v
        case .failure(let e):
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: e.message))
        }
    }
}
