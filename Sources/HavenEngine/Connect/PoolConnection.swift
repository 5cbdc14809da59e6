import Foundation
import HavenSpec
import XenAPI

/// Opens a XenAPI session to a declared Pool: credentials from the environment or a file,
/// certificate checks as the spec says.
public enum PoolConnection {
    public static func client(for pool: Pool) throws -> XenAPIClient {
        let spec = pool.spec
        let creds = spec.credentials
        var username = creds.username ?? ""
        if let env = creds.usernameEnv {
            guard let v = ProcessInfo.processInfo.environment[env], !v.isEmpty else {
                throw EngineError(.credentials, pool.name, "Pool '\(pool.name)': environment variable \(env) (spec.credentials.usernameEnv) is not set")
            }
            username = v
        }
        var password = ""
        if let env = creds.passwordEnv {
            guard let v = ProcessInfo.processInfo.environment[env] else {
                throw EngineError(.credentials, pool.name, "Pool '\(pool.name)': environment variable \(env) (spec.credentials.passwordEnv) is not set")
            }
            password = v
        } else if let file = creds.passwordFile {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw EngineError(.credentials, pool.name, "Pool '\(pool.name)': cannot read the password file \(file)")
            }
            password = text.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        }
        // An empty password is a configuration mistake (an unset secret, an empty file), never a
        // login to attempt: say which variable or file, and send nothing.
        if password.isEmpty {
            let source = creds.passwordEnv.map { "environment variable \($0) (spec.credentials.passwordEnv)" }
                ?? creds.passwordFile.map { "the first line of the password file \($0) (spec.credentials.passwordFile)" }
                ?? "spec.credentials"
            throw EngineError(.credentials, pool.name, "Pool '\(pool.name)': the password from \(source) is empty; haven does not log in with an empty password")
        }
        let tls: TLSPolicy
        if spec.tls.insecureSkipVerify {
            tls = .insecure
        } else if let fp = spec.tls.fingerprint {
            tls = TLSPolicy.fingerprint(fp) ?? .insecure
        } else if let ca = spec.tls.caFile {
            guard FileManager.default.fileExists(atPath: ca) else {
                throw EngineError(.credentials, pool.name, "Pool '\(pool.name)': CA file \(ca) (spec.tls.caFile) does not exist")
            }
            tls = .caFile(ca)
        } else {
            tls = .system
        }
        return XenAPIClient(url: spec.url, credentials: XenCredentials(username: username, password: password), tls: tls)
    }
}
