import Foundation

/// How a repository compresses chunks: `none`, `zstd` (level 3) or `zstd:N` with N in 1...22.
public enum Compression: Hashable, Sendable, TextValue {
    case none
    case zstd(level: Int)

    public static let defaultZstdLevel = 3

    public static func parse(_ text: String) -> Result<Compression, ValueError> {
        let t = text.trimmingCharacters(in: .whitespaces)
        if t == "none" { return .success(.none) }
        if t == "zstd" { return .success(.zstd(level: defaultZstdLevel)) }
        if t.hasPrefix("zstd:") {
            let levelText = t.dropFirst(5)
            guard let level = Int(levelText), (1...22).contains(level) else {
                return .failure(ValueError("zstd level '\(levelText)' must be a whole number from 1 to 22"))
            }
            return .success(.zstd(level: level))
        }
        return .failure(ValueError("'\(t)' is not a compression (use none, zstd or zstd:N with N from 1 to 22)"))
    }

    public var description: String {
        switch self {
        case .none: "none"
        case .zstd(let level): "zstd:\(level)"
        }
    }

}
