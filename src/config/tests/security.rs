//! Tests for the users' secrets and authentication methods, and the TLS tables on both sides.

use super::*;

#[test]
fn scram_verifier_shape() {
    assert_eq!(check_scram_verifier(VERIFIER), Ok(()));
    for bad in [
        "SCRAM-SHA-256$",
        "SCRAM-SHA-256$4096:c2FsdA==",
        "SCRAM-SHA-256$0:c2FsdA==$q0VkqEUzqp1pSbaBOdUK4fETXFuSOqs6VGDJdBMUxNE=:bVyp0vnsNTAg6Gh6Nc5WTRtNPVBw9NRpE11Md0aILbw=",
        "SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:bVyp0vnsNTAg6Gh6Nc5WTRtNPVBw9NRpE11Md0aILbw=",
        "SCRAM-SHA-256$4096:!!$q0VkqEUzqp1pSbaBOdUK4fETXFuSOqs6VGDJdBMUxNE=:bVyp0vnsNTAg6Gh6Nc5WTRtNPVBw9NRpE11Md0aILbw=",
    ] {
        assert!(check_scram_verifier(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn user_validation() {
    let text = format!(
        r#"[monitor]
user = "m"
password = "md5{md5}"
[[nodes]]
address = "a:1"
[[users]]
name = "nopass"
[[users]]
name = "md5-with-verifier"
auth = "md5"
password = "{VERIFIER}"
server_password = "plain"
[[users]]
name = "scram-with-md5"
password = "md5{md5}"
server_password = "plain"
[[users]]
name = "verifier-only"
password = "{VERIFIER}"
[[users]]
name = "nopass"
auth = "trust"
[[users]]
name = "bad-verifier"
password = "SCRAM-SHA-256$4096:xx"
[[users]]
name = "hash-towards-server"
password = "p"
server_password = "{VERIFIER}"
[[users]]
password = "p"
[[users]]
name = "limit"
password = "p"
max_connections = 0
[proxy]
admin_users = ["verifier-only", "ghost"]
"#,
        md5 = "0123456789abcdef0123456789abcdef"
    );
    let problems = problems(&text);
    let expect = [
        ("monitor.password", "must be the plain password"),
        (
            "users[0].password",
            "missing: set a password, or write auth = \"trust\"",
        ),
        (
            "users[1].password",
            "SCRAM-SHA-256 verifier, which cannot answer md5",
        ),
        (
            "users[2].password",
            "md5 hash, which cannot answer SCRAM-SHA-256",
        ),
        ("users[4].name", "user 'nopass' is listed twice"),
        ("users[5].password", "is not a valid SCRAM-SHA-256 verifier"),
        ("users[6].server_password", "must be the plain password"),
        ("users[7].name", "missing: every user needs a name"),
        ("users[8].max_connections", "must be at least 1, not 0"),
        ("proxy.admin_users", "'ghost' is not a [[users]] entry"),
    ];
    for (key, text) in expect {
        let p = problem_for(&problems, key);
        assert!(p.message.contains(text), "{p}");
    }
    assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    // The missing-password problem points at the user's [[users]] header.
    assert_eq!(problem_for(&problems, "users[0].password").line, Some(6));
}

#[test]
fn verifier_or_hash_without_server_password_is_pass_through() {
    let c = ok(&with_minimal(&format!(
        r#"
[[users]]
name = "scram"
password = "{VERIFIER}"
[[users]]
name = "legacy"
auth = "md5"
password = "md50123456789abcdef0123456789abcdef"
"#
    )));
    assert_eq!(c.user("scram").unwrap().server_password, None);
    assert_eq!(c.user("legacy").unwrap().server_password, None);
}

#[test]
fn auth_query_table() {
    assert_eq!(ok(MINIMAL).auth_query, None, "absent: off");
    let c = ok(&with_minimal("[auth_query]\nuser = \"lookup\"\n"));
    let a = c.auth_query.expect("present: on");
    assert_eq!(a.user, "lookup");
    assert_eq!(a.password, None);
    assert_eq!(a.query, super::DEFAULT_AUTH_QUERY);
    assert_eq!(a.database, "postgres");
    assert_eq!(a.cache_size, 1000);
    assert_eq!(a.cache_ttl, Duration::from_secs(60));
    assert_eq!(a.negative_ttl, Duration::from_secs(5));
    let c = ok(&with_minimal(
        "[auth_query]\nuser = \"l\"\npassword = \"pw\"\nquery = \"SELECT * FROM f($1)\"\n\
         database = \"auth\"\ncache_size = 5\ncache_ttl = \"0\"\nnegative_ttl = \"1s\"\n",
    ));
    let a = c.auth_query.unwrap();
    assert_eq!(a.password.as_ref().map(Secret::expose), Some("pw"));
    assert_eq!(
        (a.query.as_str(), a.database.as_str(), a.cache_size),
        ("SELECT * FROM f($1)", "auth", 5)
    );
    assert_eq!(a.cache_ttl, Duration::ZERO);
    assert_eq!(a.negative_ttl, Duration::from_secs(1));

    let problems = problems(&with_minimal(
        "[auth_query]\npassword = \"md50123456789abcdef0123456789abcdef\"\n\
         query = \"SELECT 1\"\ncache_size = 0\ncache_tll = \"1s\"\n",
    ));
    for (key, text) in [
        ("auth_query.user", "missing"),
        ("auth_query.password", "must be the plain password"),
        ("auth_query.query", "must use $1"),
        ("auth_query.cache_size", "must be at least 1"),
        ("auth_query.cache_tll", "did you mean 'cache_ttl'"),
    ] {
        let p = problem_for(&problems, key);
        assert!(p.message.contains(text), "{p}");
    }
    assert_eq!(problems.len(), 5, "{problems:#?}");
}

#[test]
fn trust_and_hashes_when_consistent() {
    let c = ok(&with_minimal(&format!(
        r#"
[[users]]
name = "postgres"
auth = "trust"
[[users]]
name = "scram"
password = "{VERIFIER}"
server_password = "real"
[[users]]
name = "legacy"
auth = "md5"
password = "md50123456789abcdef0123456789abcdef"
server_password = "real"
[[users]]
name = "looks-like-md5-but-plain"
password = "md5-not-a-hash"
"#
    )));
    let trust = c.user("postgres").unwrap();
    assert_eq!(trust.auth, AuthMethod::Trust);
    assert_eq!(trust.password, None);
    assert_eq!(trust.server_password, None);
    let scram = c.user("scram").unwrap();
    assert_eq!(
        scram.server_password.as_ref().map(Secret::expose),
        Some("real")
    );
    let plain = c.user("looks-like-md5-but-plain").unwrap();
    assert_eq!(
        plain.server_password.as_ref().map(Secret::expose),
        Some("md5-not-a-hash")
    );
}

#[test]
fn client_tls_defaults_to_disable_and_needs_cert_and_key_when_on() {
    let c = ok(MINIMAL);
    assert_eq!(c.client_tls.mode, ClientTlsMode::Disable);
    let c = ok(&with_minimal(
        "[client_tls]\nmode = \"require\"\ncert = \"s.crt\"\nkey = \"s.key\"\nca = \"c.crt\"\n",
    ));
    assert_eq!(c.client_tls.mode, ClientTlsMode::Require);
    assert_eq!(c.client_tls.cert.as_deref(), Some(Path::new("s.crt")));
    assert_eq!(c.client_tls.ca.as_deref(), Some(Path::new("c.crt")));
    let p = problems(&with_minimal(
        "[client_tls]\nmode = \"allow\"\ncert = \"s.crt\"\n",
    ));
    assert!(problem_for(&p, "client_tls.key")
        .message
        .contains("private key"));
    let p = problems(&with_minimal("[client_tls]\nmode = \"prefer\"\n"));
    assert!(problem_for(&p, "client_tls.mode")
        .message
        .contains("\"disable\", \"allow\", \"require\""));
}

#[test]
fn require_tls_is_per_user_and_needs_client_tls_on() {
    let users = "[[users]]\nname = \"open\"\npassword = \"p\"\n\
                 [[users]]\nname = \"secure\"\npassword = \"p\"\nrequire_tls = true\n";
    let tls = "[client_tls]\nmode = \"allow\"\ncert = \"s.crt\"\nkey = \"s.key\"\n";
    let c = ok(&with_minimal(&format!("{tls}{users}")));
    assert!(!c.user("open").unwrap().require_tls, "off by default");
    assert!(c.user("secure").unwrap().require_tls);
    // With TLS off the user could never log in: refused, naming the entry's key.
    let p = problems(&with_minimal(users));
    assert!(problem_for(&p, "users[1].require_tls")
        .message
        .contains("client_tls.mode is \"disable\""));
    let p = problems(&with_minimal(&format!(
        "{tls}[[users]]\nname = \"x\"\npassword = \"p\"\nrequire_tls = \"yes\"\n"
    )));
    problem_for(&p, "users[0].require_tls");
}

#[test]
fn client_cert_needs_a_ca_and_cert_users_need_tls_and_a_server_password() {
    let tls = "[client_tls]\nmode = \"allow\"\ncert = \"s.crt\"\nkey = \"s.key\"\n";
    let c = ok(&with_minimal(&format!("{tls}ca = \"c.crt\"\n")));
    assert_eq!(
        c.client_tls.client_cert,
        ClientCertMode::VerifyCa,
        "the default"
    );
    let c = ok(&with_minimal(&format!(
        "{tls}ca = \"c.crt\"\nclient_cert = \"verify-full\"\n"
    )));
    assert_eq!(c.client_tls.client_cert, ClientCertMode::VerifyFull);
    let p = problems(&with_minimal(&format!(
        "{tls}client_cert = \"verify-full\"\n"
    )));
    assert!(problem_for(&p, "client_tls.client_cert")
        .message
        .contains("client_tls.ca"));

    let cert_user = "[[users]]\nname = \"report\"\nauth = \"cert\"\nserver_password = \"s\"\n";
    let c = ok(&with_minimal(&format!("{tls}ca = \"c.crt\"\n{cert_user}")));
    let u = c.user("report").unwrap();
    assert_eq!(u.auth, AuthMethod::Cert);
    assert_eq!(u.password, None);
    // No CA: no certificate is ever asked for.
    let p = problems(&with_minimal(&format!("{tls}{cert_user}")));
    assert!(problem_for(&p, "users[0].auth")
        .message
        .contains("client_tls.ca"));
    // No server_password: nothing to log in to PostgreSQL with.
    let p = problems(&with_minimal(&format!(
        "{tls}ca = \"c.crt\"\n[[users]]\nname = \"report\"\nauth = \"cert\"\n"
    )));
    assert!(problem_for(&p, "users[0].server_password")
        .message
        .contains("auth = \"cert\""));
    // A password would be unused.
    let p = problems(&with_minimal(&format!(
        "{tls}ca = \"c.crt\"\n{cert_user}password = \"p\"\n"
    )));
    problem_for(&p, "users[0].password");
}

#[test]
fn nodes_may_override_server_tls_and_a_verifying_node_needs_a_ca() {
    let nodes = "[[nodes]]\naddress = \"10.0.0.1:5432\"\ntls_mode = \"verify-full\"\n\
                 tls_ca = \"n.crt\"\ntls_server_name = \"pg1.internal\"\n\
                 [[nodes]]\naddress = \"10.0.0.2:5432\"\n";
    let c = ok(&format!("[monitor]\nuser = \"mon\"\n{nodes}"));
    assert_eq!(
        c.nodes[0].tls,
        NodeTlsConfig {
            mode: Some(ServerTlsMode::VerifyFull),
            ca: Some(PathBuf::from("n.crt")),
            server_name: Some("pg1.internal".to_owned()),
        }
    );
    assert!(!c.nodes[1].tls.is_set(), "unset keys take [server_tls]'s");
    // A verifying node with no CA of its own takes server_tls.ca; with neither, refused.
    let verify =
        "[monitor]\nuser = \"mon\"\n[[nodes]]\naddress = \"db:5432\"\ntls_mode = \"verify-ca\"\n";
    ok(&format!("{verify}[server_tls]\nca = \"s.crt\"\n"));
    let p = problems(verify);
    assert!(problem_for(&p, "nodes[0].tls_ca")
        .message
        .contains("server_tls.ca"));
    let p = problems(&verify.replace("verify-ca", "sometimes"));
    problem_for(&p, "nodes[0].tls_mode");
}

#[test]
fn server_tls_defaults_to_prefer_and_verify_modes_need_a_ca() {
    let c = ok(MINIMAL);
    assert_eq!(c.server_tls.mode, ServerTlsMode::Prefer);
    assert!(!c.server_tls.allow_cleartext_without_tls);
    let c = ok(&with_minimal(
        "[server_tls]\nmode = \"verify-full\"\nca = \"ca.crt\"\nallow_cleartext_without_tls = true\n",
    ));
    assert_eq!(c.server_tls.mode, ServerTlsMode::VerifyFull);
    assert_eq!(c.server_tls.ca.as_deref(), Some(Path::new("ca.crt")));
    assert!(c.server_tls.allow_cleartext_without_tls);
    let p = problems(&with_minimal("[server_tls]\nmode = \"verify-ca\"\n"));
    assert!(problem_for(&p, "server_tls.ca")
        .message
        .contains("verify-ca"));
    // A misspelt key is not silently ignored.
    let p = problems(&with_minimal("[server_tls]\nmod = \"require\"\n"));
    assert!(problem_for(&p, "server_tls.mod")
        .message
        .contains("did you mean 'mode'"));
    let p = problems(&with_minimal("[server_tls]\nmode = \"allow\"\n"));
    assert!(problem_for(&p, "server_tls.mode")
        .message
        .contains("\"verify-full\""));
}
