//! RabbitMQ for the shared suite: AMQP on 127.0.0.1:5672, the management API on 15672,
//! `guest`/`guest` as the superuser. Each fixture makes its own vhost (with a queue
//! `items` holding one message), admin user and username prefix.

use std::sync::Arc;

use base64::Engine as _;
use mayfly_core::provider::Provider;
use mayfly_core::secret::SecretString;
use mayfly_providers::RabbitMqProvider;
use mayfly_testkit::amqp::{Amqp, MANAGEMENT};
use time::OffsetDateTime;

use mayfly_providers::conformance::{target, Engine, Fixture, Session};

pub struct Rabbit;

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A management API call as `guest`; the status and the JSON answer.
pub async fn api(
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{MANAGEMENT}/api/{path}"))
        .basic_auth("guest", Some("guest"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

pub struct RabbitSession(pub Amqp);

#[async_trait::async_trait]
impl Session for RabbitSession {
    async fn select(&mut self) -> Result<i64, String> {
        self.0
            .message_count("items")
            .await
            .map(i64::from)
            .map_err(|e| e.to_string())
    }
    async fn insert(&mut self) -> Result<(), String> {
        self.0
            .publish("items", b"x")
            .await
            .map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl Engine for Rabbit {
    const NAME: &'static str = "rabbitmq";
    const ADDR: &'static str = "127.0.0.1:15672";
    const HAS_EXPIRY: bool = false;
    const DATABASE_KEY: Option<&'static str> = Some("vhost");

    fn provider() -> Arc<dyn Provider> {
        Arc::new(RabbitMqProvider::new())
    }

    async fn setup(suffix: &str) -> Fixture {
        use reqwest::Method;
        let prefix = format!("qft{suffix}_");
        let admin_user = format!("{prefix}admin");
        let admin_password = format!("Adm{}", uuid::Uuid::new_v4().simple());
        let vhost = format!("mayfly_test_{suffix}");
        let v = enc(&vhost);
        let all = serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"});
        for (method, path, body) in [
            (Method::PUT, format!("vhosts/{v}"), None),
            (Method::PUT, format!("permissions/{v}/guest"), Some(all)),
            (
                Method::PUT,
                format!("queues/{v}/items"),
                Some(serde_json::json!({"durable": false, "auto_delete": false})),
            ),
            (
                Method::POST,
                format!("exchanges/{v}/amq.default/publish"),
                Some(serde_json::json!({"properties": {}, "routing_key": "items",
                    "payload": "seed", "payload_encoding": "string"})),
            ),
            // The minimum the provider needs (see the rabbitmq module docs).
            (
                Method::PUT,
                format!("users/{admin_user}"),
                Some(serde_json::json!({"password": admin_password, "tags": "administrator"})),
            ),
        ] {
            let (status, answer) = api(method, &path, body).await;
            assert!((200..300).contains(&status), "{path}: {status} {answer}");
        }
        let settings = serde_json::json!({
            "username_template": format!("{prefix}{{{{identity}}}}_{{{{rand}}}}"),
            "grants": {
                "read": {"permissions": {&vhost: {"configure": "", "write": "", "read": ".*"}}},
                "write": {"tags": ["monitoring"],
                          "permissions": {&vhost: {"configure": "", "write": ".*", "read": ".*"}}},
            },
            "timeout_seconds": 20
        });
        Fixture {
            suffix: suffix.into(),
            admin: SecretString::new(format!(
                "http://{admin_user}:{admin_password}@127.0.0.1:15672"
            )),
            database: vhost,
            admin_user,
            admin_password,
            prefix,
            target: target("rabbitmq", &format!("mq-{suffix}"), settings),
        }
    }

    async fn cleanup(fx: &Fixture) {
        use reqwest::Method;
        api(
            Method::DELETE,
            &format!("vhosts/{}", enc(&fx.database)),
            None,
        )
        .await;
        let (_, users) = api(Method::GET, "users", None).await;
        for u in users.as_array().cloned().unwrap_or_default() {
            let name = u["name"].as_str().unwrap_or_default();
            if name.starts_with(&fx.prefix) {
                api(Method::DELETE, &format!("users/{}", enc(name)), None).await;
            }
        }
    }

    async fn connect(dsn: &str) -> Result<Box<dyn Session>, String> {
        Amqp::connect(dsn)
            .await
            .map(|c| Box::new(RabbitSession(c)) as Box<dyn Session>)
            .map_err(|e| e.to_string())
    }

    async fn user_exists(_fx: &Fixture, name: &str) -> bool {
        api(reqwest::Method::GET, &format!("users/{}", enc(name)), None)
            .await
            .0
            == 200
    }

    async fn valid_until(_fx: &Fixture, _name: &str) -> Option<OffsetDateTime> {
        None
    }

    async fn password_works(_fx: &Fixture, user: &str, password: &str) -> bool {
        Amqp::login("127.0.0.1", 5672, user, password).await.is_ok()
    }

    fn rejected_admin_url(fx: &Fixture, password: &str) -> String {
        format!("http://{}:{password}@127.0.0.1:15672", fx.admin_user)
    }

    fn down_admin_url(fx: &Fixture, password: &str) -> String {
        format!("http://{}:{password}@127.0.0.1:1", fx.admin_user)
    }

    fn creation_echoing_password() -> Option<&'static str> {
        None
    }

    // RabbitMQ users carry nothing we could set as a marker: the store's record decides.
    const HAS_MARKER: bool = false;

    async fn create_by_hand(fx: &Fixture, name: &str, admin: bool) {
        let tags = if admin { "administrator" } else { "" };
        let (status, _) = api(
            reqwest::Method::PUT,
            &format!("users/{}", enc(name)),
            Some(serde_json::json!({"password": "handmade", "tags": tags})),
        )
        .await;
        assert_eq!(status, 201);
        let _ = fx;
    }

    async fn server_hashes_alike(password: &str) -> bool {
        let name = format!("qft_hash_{}", mayfly_testkit::suffix());
        api(
            reqwest::Method::PUT,
            &format!("users/{name}"),
            Some(serde_json::json!({"password": password, "tags": ""})),
        )
        .await;
        let (_, user) = api(reqwest::Method::GET, &format!("users/{name}"), None).await;
        api(reqwest::Method::DELETE, &format!("users/{name}"), None).await;
        let server = user["password_hash"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(&server)
            .unwrap_or_default();
        let Some(salt) = blob.get(..4).and_then(|s| <[u8; 4]>::try_from(s).ok()) else {
            return false;
        };
        let ours = mayfly_providers::verifier::rabbitmq_sha256_with(
            &SecretString::new(password.into()),
            salt,
        );
        ours.expose() == server
    }
}
