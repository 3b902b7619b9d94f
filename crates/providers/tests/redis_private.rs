//! The `redis` kind against private `redis-server` processes, for what the shared one on
//! 6379 cannot show:
//!
//! - TLS (`rediss://`): a TLS port with a certificate from a throwaway CA, trusted through
//!   `SSL_CERT_FILE` (which the provider's system-roots loader honours). Its own test
//!   binary, because the CA is set for the whole process before the first TLS connection.
//! - An ACL file: revocations and root rotations survive a restart (`ACL SAVE`).
//!
//! Needs `redis-server` (built with TLS) and `openssl` on the PATH; skipped without them
//! (a failure under `MAYFLY_REQUIRE_SERVICES=1`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mayfly_core::provider::{Provider, ProviderError};
use mayfly_core::secret::SecretString;
use mayfly_providers::conformance::{issue, target, Fixture};
use mayfly_providers::redis::{Client, Endpoint, Reply};
use mayfly_providers::RedisProvider;
use mayfly_testkit::{eventually, services};

const SUITE: &str = "redis TLS";

/// The private server, stopped when the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
fn certificates(dir: &Path) -> Result<(), String> {
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    for cmd in [
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=mayfly-test-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1",
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile server.ext",
    ] {
        run(dir, &cmd.split(' ').collect::<Vec<_>>())?;
    }
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &Path, port: u16) -> Result<Server, String> {
    let port = port.to_string();
    start_with(
        dir,
        &[
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.pem",
            "--tls-auth-clients",
            "no",
        ],
    )
}

fn start_with(dir: &Path, args: &[&str]) -> Result<Server, String> {
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Server)
        .map_err(|e| format!("redis-server: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_use_and_revoke_over_tls() {
    let dir = mayfly_testkit::scratch_dir();
    if let Err(why) = certificates(&dir) {
        services::unavailable(SUITE, "openssl", &why);
        return;
    }
    // Before the provider's first TLS connection, which loads the roots once.
    std::env::set_var("SSL_CERT_FILE", dir.join("ca.pem"));
    let port = free_port();
    let _server = match start(&dir, port) {
        Ok(s) => s,
        Err(why) => {
            services::unavailable(SUITE, "redis-server", &why);
            return;
        }
    };
    let admin_url = format!("rediss://127.0.0.1:{port}");
    wait_up(&admin_url).await;

    let settings = serde_json::json!({
        "grants": {"read": "~k:* +@read", "write": "~k:* +@read +@write"},
    });
    let fx = Fixture {
        suffix: "tls".into(),
        database: String::new(),
        admin_user: "default".into(),
        admin_password: String::new(),
        prefix: "mayfly_".into(),
        target: target("redis", "cache-tls", settings),
        admin: SecretString::new(admin_url.clone()),
    };
    let p = RedisProvider::new();
    p.validate_target(&fx.target, Some(&fx.admin)).unwrap();
    p.check_live(fx.access()).await.unwrap();
    p.check_admin(fx.access()).await.unwrap();

    let read = issue(&p, &fx, "read").await.unwrap();
    assert!(
        read.dsn().starts_with("rediss://"),
        "a TLS target hands out rediss:// URLs"
    );
    assert_eq!(read.credential.public["tls"], true);
    let mut c = Client::connect(&Endpoint::parse(read.dsn()).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.cmd(&["GET", "k:1"]).await.unwrap(), Reply::Bulk(None));
    assert!(
        matches!(c.cmd(&["SET", "k:1", "v"]).await.unwrap(), Reply::Error(e) if e.starts_with("NOPERM"))
    );
    p.revoke(&read.lease, fx.access()).await.unwrap();
    let ended = eventually(Duration::from_secs(1), async || {
        c.cmd(&["PING"]).await.is_err()
    })
    .await;
    assert!(ended, "the TLS session must end");
    assert!(matches!(
        Client::connect(&Endpoint::parse(read.dsn()).unwrap()).await,
        Ok(Err(_))
    ));

    // Plain text to the TLS port does not get through, and says the target is unavailable.
    let mut plain = fx.clone();
    plain.admin = SecretString::new(format!("redis://127.0.0.1:{port}"));
    let e = p.check_admin(plain.access()).await.err().unwrap();
    assert!(matches!(e, ProviderError::Unavailable(_)), "{e:?}");
}

async fn wait_up(url: &str) {
    let ep = Endpoint::parse(url).unwrap();
    let up = eventually(Duration::from_secs(10), || async {
        match Client::connect(&ep).await {
            Ok(Ok(mut c)) => c.cmd(&["PING"]).await.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert_eq!(up.unwrap(), Reply::Status("PONG".into()));
}

/// With an ACL file, a revoked user does not come back after a restart and a rotated admin
/// password stays rotated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_file_keeps_revocations_and_rotations_across_restarts() {
    let dir = mayfly_testkit::scratch_dir();
    std::fs::write(
        dir.join("users.acl"),
        "user default on nopass ~* &* +@all\nuser mayfly_admin on >Adm1nPassw0rd -@all +acl +client|kill +ping\n",
    )
    .unwrap();
    let port = free_port();
    let port_arg = port.to_string();
    let args = ["--port", port_arg.as_str(), "--aclfile", "users.acl"];
    let server = match start_with(&dir, &args) {
        Ok(s) => s,
        Err(why) => {
            services::unavailable("redis ACL file", "redis-server", &why);
            return;
        }
    };
    let admin_url = format!("redis://mayfly_admin:Adm1nPassw0rd@127.0.0.1:{port}");
    wait_up(&admin_url).await;
    let settings = serde_json::json!({"grants": {"read": "~k:* +@read", "write": "~k:* +@write"}});
    let mut fx = Fixture {
        suffix: "aclfile".into(),
        database: String::new(),
        admin_user: "mayfly_admin".into(),
        admin_password: "Adm1nPassw0rd".into(),
        prefix: "mayfly_".into(),
        target: target("redis", "cache-aclfile", settings),
        admin: SecretString::new(admin_url.clone()),
    };
    let p = RedisProvider::new();
    let kept = issue(&p, &fx, "read").await.unwrap();
    let revoked = issue(&p, &fx, "read").await.unwrap();
    // The rotation saves the file, with both lease users in it.
    let next = p.plan_root_rotation(fx.access()).unwrap();
    p.rotate_root(fx.access(), &next).await.unwrap();
    fx.admin = next.clone();
    p.revoke(&revoked.lease, fx.access()).await.unwrap();

    drop(server);
    let _server = start_with(&dir, &args).unwrap();
    wait_up(next.expose()).await;
    let login = |dsn: String| async move {
        matches!(
            Client::connect(&Endpoint::parse(&dsn).unwrap()).await,
            Ok(Ok(_))
        )
    };
    assert!(
        !login(admin_url.clone()).await,
        "the old admin password came back"
    );
    assert!(
        login(kept.dsn().to_string()).await,
        "a saved live user was lost"
    );
    assert!(
        !login(revoked.dsn().to_string()).await,
        "a revoked user came back from the ACL file"
    );
    p.check_admin(fx.access()).await.unwrap();
}
