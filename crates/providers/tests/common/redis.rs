//! Redis for the shared suite: 127.0.0.1:6379, the `default` user without a password as
//! the superuser. Each fixture makes its own admin ACL user and key prefix.

use std::sync::Arc;

use mayfly_core::provider::Provider;
use mayfly_core::secret::SecretString;
use mayfly_providers::redis::{Client, Endpoint, Reply};
use mayfly_providers::RedisProvider;
use time::OffsetDateTime;

use mayfly_providers::conformance::{target, Engine, Fixture, Session};

pub const ADDR: &str = "127.0.0.1:6379";

pub struct Redis;

/// The superuser (`default`, no password).
pub async fn superuser() -> Client {
    Client::connect(&Endpoint::parse("redis://127.0.0.1:6379").unwrap())
        .await
        .unwrap()
        .unwrap()
}

pub async fn su(args: &[&str]) -> Reply {
    superuser().await.cmd(args).await.unwrap()
}

/// Connects with a `redis://user:password@host:port` URL; a refused login is `Err`.
pub async fn login(dsn: &str) -> Result<Client, String> {
    let ep = Endpoint::parse(dsn)?;
    match Client::connect(&ep).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(refused)) => Err(refused),
        Err(e) => Err(e.to_string()),
    }
}

/// A session on the fixture's set `<prefix>items`; the prefix is the username's first
/// part (`rft<suffix>_`), which the fixture's key rules cover.
pub struct RedisSession {
    pub client: Client,
    pub key: String,
}

fn reply_result(r: Reply) -> Result<Reply, String> {
    match r {
        Reply::Error(e) => Err(e),
        r => Ok(r),
    }
}

#[async_trait::async_trait]
impl Session for RedisSession {
    async fn select(&mut self) -> Result<i64, String> {
        match reply_result(
            self.client
                .cmd(&["SCARD", &self.key])
                .await
                .map_err(|e| e.to_string())?,
        )? {
            Reply::Int(n) => Ok(n),
            other => Err(format!("{other:?}")),
        }
    }
    async fn insert(&mut self) -> Result<(), String> {
        let member = uuid::Uuid::new_v4().to_string();
        reply_result(
            self.client
                .cmd(&["SADD", &self.key, &member])
                .await
                .map_err(|e| e.to_string())?,
        )
        .map(|_| ())
    }
}

pub fn user_of(dsn: &str) -> String {
    url::Url::parse(dsn).unwrap().username().to_string()
}

#[async_trait::async_trait]
impl Engine for Redis {
    const NAME: &'static str = "redis";
    const ADDR: &'static str = ADDR;
    const HAS_EXPIRY: bool = false;
    const DATABASE_KEY: Option<&'static str> = None;

    fn provider() -> Arc<dyn Provider> {
        Arc::new(RedisProvider::new())
    }

    async fn setup(suffix: &str) -> Fixture {
        let prefix = format!("rft{suffix}_");
        let admin_user = format!("{prefix}admin");
        let admin_password = format!("Adm{}", uuid::Uuid::new_v4().simple());
        let mut c = superuser().await;
        // The minimum the provider needs (see the redis module docs).
        let pw = format!(">{admin_password}");
        let r = c
            .cmd(&[
                "ACL",
                "SETUSER",
                &admin_user,
                "on",
                &pw,
                "-@all",
                "+acl",
                "+client|kill",
                "+ping",
            ])
            .await
            .unwrap();
        assert_eq!(r, Reply::Status("OK".into()));
        let key = format!("{prefix}items");
        c.cmd(&["SADD", &key, "seed"]).await.unwrap();
        let settings = serde_json::json!({
            "username_template": format!("{prefix}{{{{identity}}}}_{{{{rand}}}}"),
            "grants": {
                "read": format!("~{prefix}* +@read"),
                "write": format!("~{prefix}* +@read +@write"),
            },
            "timeout_seconds": 20
        });
        Fixture {
            suffix: suffix.into(),
            admin: SecretString::new(format!(
                "redis://{admin_user}:{admin_password}@127.0.0.1:6379"
            )),
            database: String::new(),
            admin_user,
            admin_password,
            prefix,
            target: target("redis", &format!("redis-{suffix}"), settings),
        }
    }

    async fn cleanup(fx: &Fixture) {
        let mut c = superuser().await;
        c.cmd(&["DEL", &format!("{}items", fx.prefix)])
            .await
            .unwrap();
        if let Reply::Array(Some(users)) = c.cmd(&["ACL", "USERS"]).await.unwrap() {
            for u in users.iter().filter_map(Reply::text) {
                if u.starts_with(&fx.prefix) {
                    c.cmd(&["ACL", "DELUSER", &u]).await.unwrap();
                }
            }
        }
    }

    async fn connect(dsn: &str) -> Result<Box<dyn Session>, String> {
        let user = user_of(dsn);
        let prefix = &user[..=user.find('_').unwrap()];
        let key = format!("{prefix}items");
        let client = login(dsn).await?;
        Ok(Box::new(RedisSession { client, key }))
    }

    async fn user_exists(_fx: &Fixture, name: &str) -> bool {
        !matches!(
            su(&["ACL", "GETUSER", name]).await,
            Reply::Bulk(None) | Reply::Array(None)
        )
    }

    async fn valid_until(_fx: &Fixture, _name: &str) -> Option<OffsetDateTime> {
        None
    }

    async fn password_works(_fx: &Fixture, user: &str, password: &str) -> bool {
        login(&format!("redis://{user}:{password}@127.0.0.1:6379"))
            .await
            .is_ok()
    }

    fn rejected_admin_url(fx: &Fixture, password: &str) -> String {
        format!("redis://{}:{password}@127.0.0.1:6379", fx.admin_user)
    }

    fn down_admin_url(fx: &Fixture, password: &str) -> String {
        format!("redis://{}:{password}@127.0.0.1:1", fx.admin_user)
    }

    fn creation_echoing_password() -> Option<&'static str> {
        None
    }

    // Redis users carry no comment or attribute: the store's record is the only proof.
    const HAS_MARKER: bool = false;

    async fn create_by_hand(_fx: &Fixture, name: &str, admin: bool) {
        let rights = if admin { "+@all" } else { "+@read" };
        let r = su(&["ACL", "SETUSER", name, "on", ">handmade", "~*", rights]).await;
        assert_eq!(r, Reply::Status("OK".into()));
    }

    async fn server_hashes_alike(password: &str) -> bool {
        let name = format!("rft_hash_{}", mayfly_testkit::suffix());
        let mut c = superuser().await;
        c.cmd(&["ACL", "SETUSER", &name, &format!(">{password}")])
            .await
            .unwrap();
        let user = c.cmd(&["ACL", "GETUSER", &name]).await.unwrap();
        c.cmd(&["ACL", "DELUSER", &name]).await.unwrap();
        let Reply::Array(Some(fields)) = user else {
            return false;
        };
        let passwords = fields
            .iter()
            .position(|f| f.text().as_deref() == Some("passwords"))
            .and_then(|i| fields.get(i + 1));
        let Some(Reply::Array(Some(hashes))) = passwords else {
            return false;
        };
        let ours = mayfly_providers::verifier::redis_sha256(&SecretString::new(password.into()));
        hashes
            .iter()
            .filter_map(Reply::text)
            .any(|h| format!("#{h}") == ours.expose())
    }
}
