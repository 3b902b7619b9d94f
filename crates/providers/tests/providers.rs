//! Real PostgreSQL, MariaDB, Redis and RabbitMQ: the provider conformance suite, one call
//! per engine.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (user `postgres`, trust), MariaDB on
//! 127.0.0.1:3306 (`root`, empty password), Redis on 127.0.0.1:6379 (`default` user, no
//! password) and RabbitMQ on 127.0.0.1:5672 with the management API on 15672
//! (`guest`/`guest`). A service that is down is skipped with a
//! `SKIPPED:` line on stderr, or fails the run when `MAYFLY_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod postgres {
    mayfly_providers::provider_suite!(crate::common::pg::Pg);
}

mod mariadb {
    mayfly_providers::provider_suite!(crate::common::mariadb::Maria);
}

mod redis {
    use std::time::{Duration, Instant};

    use mayfly_core::provider::ProviderError;
    use mayfly_core::secret::SecretString;
    use mayfly_providers::conformance::{fixture, issue};
    use mayfly_providers::redis::Reply;
    use mayfly_providers::RedisProvider;

    use crate::common::redis::{login, su, Redis};

    mayfly_providers::provider_suite!(crate::common::redis::Redis);

    /// Within its rules and nowhere else; after revoke, an open connection is closed within
    /// a second and a new login is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rules_hold_and_revoke_closes_within_a_second() {
        let Some(guard) = fixture::<Redis>().await else {
            return;
        };
        let fx = &guard.fx;
        let p = RedisProvider::new();
        let key = format!("{}items", fx.prefix);
        let read = issue(&p, fx, "read").await.unwrap();
        let mut c = login(read.dsn()).await.unwrap();
        assert_eq!(c.cmd(&["SCARD", &key]).await.unwrap(), Reply::Int(1));
        for refused in [
            vec!["SADD", key.as_str(), "x"],
            vec!["GET", "elsewhere:key"],
            vec!["ACL", "WHOAMI"],
            vec!["FLUSHALL"],
        ] {
            match c.cmd(&refused).await.unwrap() {
                Reply::Error(e) => assert!(e.starts_with("NOPERM"), "{refused:?}: {e}"),
                other => panic!("{refused:?} allowed: {other:?}"),
            }
        }
        mayfly_core::provider::Provider::revoke(&p, &read.lease, fx.access())
            .await
            .unwrap();
        let start = Instant::now();
        let mut closed = false;
        while start.elapsed() < Duration::from_secs(1) {
            if c.cmd(&["PING"]).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "the open connection survived revoke for a second");
        assert!(login(read.dsn()).await.is_err());
    }

    /// Bad rules and an admin without the rights are refused when the target is checked,
    /// with the reason.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn target_checks() {
        let Some(guard) = fixture::<Redis>().await else {
            return;
        };
        let p = RedisProvider::new();
        p.check_live(guard.fx.access()).await.unwrap();
        let with_rules = |read: &str| {
            let mut fx = guard.fx.clone();
            fx.target.settings["grants"]["read"] = read.into();
            fx
        };
        // Refused offline, by `validate_target`.
        for (rules, why) in [("~a:* +get on", "state"), ("+@nosuch", "unknown category")] {
            let fx = with_rules(rules);
            let e =
                mayfly_core::provider::Provider::validate_target(&p, &fx.target, Some(&fx.admin))
                    .err()
                    .unwrap();
            assert!(
                matches!(&e, ProviderError::BadSettings(m) if m.contains(why)),
                "{rules}: {e}"
            );
        }
        // Refused by Redis on the throwaway user, or for allowing user management.
        for (rules, why) in [
            ("~a:* +nosuchcommand", "Unknown command"),
            ("~a:* +@all", "ACL SETUSER"),
            ("~a:* +acl|setuser", "ACL SETUSER"),
        ] {
            let fx = with_rules(rules);
            let e = p.check_live(fx.access()).await.err().unwrap();
            assert!(
                matches!(&e, ProviderError::BadSettings(m) if m.contains(why)),
                "{rules}: {e}"
            );
        }
        // No probe user is left behind.
        if let Reply::Array(Some(users)) = su(&["ACL", "USERS"]).await {
            assert!(!users
                .iter()
                .filter_map(Reply::text)
                .any(|u| u.contains("probe")));
        }
        // An admin that may not manage users.
        let weak = format!("{}weak", guard.fx.prefix);
        su(&["ACL", "SETUSER", &weak, "on", ">weakpw", "+ping"]).await;
        let mut fx = guard.fx.clone();
        fx.admin = SecretString::new(format!("redis://{weak}:weakpw@127.0.0.1:6379"));
        let e = p.check_live(fx.access()).await.err().unwrap();
        assert!(
            matches!(&e, ProviderError::BadSettings(m) if m.contains("may not create")),
            "{e}"
        );
        assert!(!e.to_string().contains("weakpw"));
    }
}

mod rabbitmq {
    use std::time::{Duration, Instant};

    use mayfly_core::provider::{Provider, ProviderError};
    use mayfly_core::secret::SecretString;
    use mayfly_providers::conformance::{fixture, issue};
    use mayfly_providers::RabbitMqProvider;
    use mayfly_testkit::amqp::{Amqp, AmqpError};

    use crate::common::rabbitmq::{api, Rabbit};

    mayfly_providers::provider_suite!(crate::common::rabbitmq::Rabbit);

    /// A real AMQP client within its permissions and refused outside them; after revoke,
    /// an open connection is closed within a second and a new login is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn permissions_hold_and_revoke_closes_within_a_second() {
        let Some(guard) = fixture::<Rabbit>().await else {
            return;
        };
        let fx = &guard.fx;
        let p = RabbitMqProvider::new();
        let write = issue(&p, fx, "write").await.unwrap();
        let mut c = Amqp::connect(write.dsn()).await.unwrap();
        c.publish("items", b"hello").await.unwrap();
        assert_eq!(c.message_count("items").await.unwrap(), 2);
        // Another vhost is refused at `connection.open`.
        let other = write.dsn().rsplit_once('/').unwrap().0.to_string() + "/%2F";
        match Amqp::connect(&other).await {
            Err(AmqpError::ConnectionClosed(530, _)) => {}
            other => panic!("the default vhost was not refused: {:?}", other.err()),
        }
        let read = issue(&p, fx, "read").await.unwrap();
        let mut r = Amqp::connect(read.dsn()).await.unwrap();
        match r.publish("items", b"no").await {
            Err(AmqpError::ChannelClosed(403, _)) => {}
            other => panic!("a read grant published: {:?}", other.err()),
        }
        assert_eq!(r.message_count("items").await.unwrap(), 2);

        p.revoke(&write.lease, fx.access()).await.unwrap();
        let start = Instant::now();
        let mut closed = false;
        while start.elapsed() < Duration::from_secs(1) {
            if c.message_count("items").await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "the open connection survived revoke for a second");
        assert!(Amqp::connect(write.dsn()).await.is_err());
        // The other lease's connection is untouched.
        assert_eq!(r.message_count("items").await.unwrap(), 2);
        p.revoke(&read.lease, fx.access()).await.unwrap();
    }

    /// A vhost that does not exist, an expression RabbitMQ refuses and an admin without
    /// the `administrator` tag are refused when the target is checked, with the reason.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn target_checks() {
        let Some(guard) = fixture::<Rabbit>().await else {
            return;
        };
        let p = RabbitMqProvider::new();
        p.check_live(guard.fx.access()).await.unwrap();
        let vhost = guard.fx.database.clone();
        let with_read = |perms: serde_json::Value| {
            let mut fx = guard.fx.clone();
            fx.target.settings["grants"]["read"]["permissions"] = perms;
            fx
        };
        let fx = with_read(
            serde_json::json!({"no_such_vhost_here": {"configure": "", "write": "", "read": ".*"}}),
        );
        let e = p.check_live(fx.access()).await.err().unwrap();
        assert!(
            matches!(&e, ProviderError::BadSettings(m) if m.contains("no_such_vhost_here") && m.contains("does not exist")),
            "{e}"
        );
        let fx =
            with_read(serde_json::json!({&vhost: {"configure": "(", "write": "", "read": ".*"}}));
        let e = p.check_live(fx.access()).await.err().unwrap();
        assert!(
            matches!(&e, ProviderError::BadSettings(m) if m.contains("invalid_regexp")),
            "{e}"
        );
        // No probe user is left behind.
        let (_, users) = api(reqwest::Method::GET, "users", None).await;
        assert!(!users.to_string().contains("probe"), "{users}");
        // An admin without the administrator tag.
        let weak = format!("{}weak", guard.fx.prefix);
        api(
            reqwest::Method::PUT,
            &format!("users/{weak}"),
            Some(serde_json::json!({"password": "weakpw", "tags": "management"})),
        )
        .await;
        let mut fx = guard.fx.clone();
        fx.admin = SecretString::new(format!("http://{weak}:weakpw@127.0.0.1:15672"));
        let e = p.check_live(fx.access()).await.err().unwrap();
        assert!(
            matches!(&e, ProviderError::BadSettings(m) if m.contains("administrator")),
            "{e}"
        );
        assert!(!e.to_string().contains("weakpw"));
    }
}
