//! The HTTP API driven in-process through the router (no process, no socket): what needs
//! neither a real listener nor the CLI is tested here, in milliseconds. The black-box
//! suites in `crates/cli/tests` keep what needs the real binary (flags, signals, crashes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use mayfly_server::{app, Config, Server};
use serde_json::{json, Value};
use tower::ServiceExt;

/// A broker's router on an in-memory store, and its bootstrap operator token.
struct InProcess {
    router: Router,
    token: String,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start() -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            store: Some("sqlite::memory:".into()),
            ..Config::default()
        };
        let (server, bootstrap) = Server::prepare(config, None).await.unwrap();
        let token = bootstrap
            .operator_token
            .expect("a first start makes a token");
        assert!(server.record_bootstrap_token(&token).await.unwrap());
        InProcess {
            router: app(server.state()),
            token: token.expose().to_string(),
            _dir: dir,
        }
    }

    /// A broker with identity `ci` (a pipeline, 30 days left) and token target `api`
    /// (action `read`, default 5m, maximum 1h, `ci` allowed).
    async fn with_pipeline_and_token_target() -> InProcess {
        let broker = InProcess::start().await;
        let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(30))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let (status, _, body) = broker
            .post(
                "/v1/identities",
                json!({"id": "ci", "kind": "pipeline", "owner": "team", "purpose": "tests", "expires_at": expires}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, _, body) = broker
            .post(
                "/v1/targets",
                json!({"name": "api", "kind": "token", "actions": ["read"], "default_ttl": "5m", "max_ttl": "1h", "allow": ["ci"]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        broker
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, String, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        let body = match body {
            Some(b) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let response = self
            .router
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, content_type, value)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, String, Value) {
        self.call(Method::POST, path, Some(body)).await
    }
}

#[tokio::test]
async fn a_token_grant_is_issued_seen_and_revoked() {
    let broker = InProcess::with_pipeline_and_token_target().await;

    let (status, _, issued) = broker
        .post(
            "/v1/grants",
            json!({"identity": "ci", "target": "api", "action": "read", "purpose": "deploy", "task": "t-1", "ttl": "10m"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert_eq!(issued["grant"]["state"], "issued");
    assert_eq!(issued["lease"]["state"], "active");
    let lease = issued["lease"]["id"].as_str().unwrap().to_string();

    let (status, _, seen) = broker
        .call(Method::GET, &format!("/v1/leases/{lease}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["task"], "t-1");

    let (status, _, outcome) = broker.post("/v1/revoke", json!({"task": "t-1"})).await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    let (_, _, after) = broker
        .call(Method::GET, &format!("/v1/leases/{lease}"), None)
        .await;
    assert_eq!(after["state"], "revoked");

    // Every step is in one intact chain.
    let (status, _, report) = broker.call(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["first_break"], Value::Null, "{report}");
}

#[tokio::test]
async fn bad_input_is_problem_json_naming_the_field() {
    let broker = InProcess::start().await;
    let (status, content_type, problem) = broker
        .post(
            "/v1/identities",
            json!({"id": "Not Valid!", "kind": "pipeline", "owner": "team", "purpose": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(content_type, "application/problem+json");
    assert!(
        problem.to_string().contains("id"),
        "the problem names the field: {problem}"
    );
    // Nothing was half-written.
    let (_, _, identities) = broker.call(Method::GET, "/v1/identities", None).await;
    assert_eq!(identities, json!([]));
}

#[tokio::test]
async fn health_and_metrics_answer_without_a_socket() {
    let broker = InProcess::start().await;
    let (status, _, _) = broker.call(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, content_type, _) = broker.call(Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/openmetrics-text")
            || content_type.starts_with("text/plain"),
        "{content_type}"
    );
}

/// Without a data directory (a platform with none and no `--data-dir`) the broker refuses
/// to start instead of keeping state in the working directory, and writes nothing.
#[tokio::test]
async fn no_data_directory_is_a_configuration_error() {
    let config = Config {
        data_dir: std::path::PathBuf::new(),
        ..Config::default()
    };
    let err = match Server::prepare(config, None).await {
        Ok(_) => panic!("a broker without a data directory must not start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("--data-dir"), "{err}");
}

/// One TTL rule: what is granted is the least of the request, the policy cap, the target's
/// maximum and the identity's remaining life, and the decision says which cut it. A
/// request above the target's maximum is clamped, not refused.
#[tokio::test]
async fn a_ttl_above_the_targets_maximum_is_clamped_and_the_decision_says_so() {
    let broker = InProcess::with_pipeline_and_token_target().await;
    let (status, _, issued) = broker
        .post(
            "/v1/grants",
            json!({"identity": "ci", "target": "api", "action": "read", "purpose": "p", "task": "t", "ttl": "5h"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let issued_at = time::OffsetDateTime::parse(
        issued["lease"]["issued_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let lease_expires = time::OffsetDateTime::parse(
        issued["lease"]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!((lease_expires - issued_at).whole_seconds(), 3600);
    let reasons = issued["grant"]["decision"]["reasons"].to_string();
    assert!(
        reasons.contains("granted TTL 1h instead of 5h: the maximum of target"),
        "{reasons}"
    );

    // `explain` applies the same rule.
    let (status, _, explained) = broker
        .post(
            "/v1/policy/explain",
            json!({"identity": "ci", "target": "api", "action": "read", "purpose": "p", "task": "t", "ttl": "5h"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{explained}");
    assert!(
        explained.to_string().contains("the maximum of target"),
        "{explained}"
    );
}

/// Renewal follows the same rule and says what it did: a renewal that cannot extend (the
/// lease already runs that long) or is capped says so instead of answering in silence.
#[tokio::test]
async fn a_renewal_says_when_it_was_capped_or_changed_nothing() {
    let broker = InProcess::with_pipeline_and_token_target().await;
    let (_, _, issued) = broker
        .post(
            "/v1/grants",
            json!({"identity": "ci", "target": "api", "action": "read", "purpose": "p", "task": "t", "ttl": "30m"}),
        )
        .await;
    let lease = issued["lease"]["id"].as_str().unwrap().to_string();

    // Right after issue, renewing by the grant's own TTL cannot extend anything.
    let (status, _, same) = broker
        .post(&format!("/v1/leases/{lease}/renew"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{same}");
    assert!(
        same["reasons"]
            .to_string()
            .contains("expiry practically unchanged"),
        "{same}"
    );

    // Past the lease's maximum: capped, and said.
    let (status, _, capped) = broker
        .post(&format!("/v1/leases/{lease}/renew"), json!({"ttl": "5h"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{capped}");
    assert_eq!(
        capped["lease"]["expires_at"],
        capped["lease"]["max_expires_at"]
    );
    assert!(
        capped["reasons"]
            .to_string()
            .contains("the lease's maximum"),
        "{capped}"
    );

    // An ordinary extension needs no explanation.
    let (_, _, fresh) = broker
        .post(
            "/v1/grants",
            json!({"identity": "ci", "target": "api", "action": "read", "purpose": "p", "task": "t2", "ttl": "5m"}),
        )
        .await;
    let fresh_lease = fresh["lease"]["id"].as_str().unwrap().to_string();
    let (_, _, extended) = broker
        .post(
            &format!("/v1/leases/{fresh_lease}/renew"),
            json!({"ttl": "20m"}),
        )
        .await;
    assert_eq!(extended["reasons"], json!([]), "{extended}");
}

/// `POST /v1/revoke` by target and by target-name prefix, `POST /v1/leases/{id}/revoke`,
/// `GET /v1/leases?target=`, and `GET /v1/keys`, as operators see them.
#[tokio::test]
async fn leases_are_revoked_by_id_target_and_prefix_and_keys_are_listed() {
    let broker = InProcess::with_pipeline_and_token_target().await;
    for name in ["api-b", "ops"] {
        let (status, _, body) = broker
            .post(
                "/v1/targets",
                json!({"name": name, "kind": "token", "actions": ["read"], "default_ttl": "5m", "max_ttl": "1h", "allow": ["ci"]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mut leases = Vec::new();
    for (target, task) in [("api", "t1"), ("api-b", "t2"), ("ops", "t3"), ("ops", "t4")] {
        let (status, _, issued) = broker
            .post(
                "/v1/grants",
                json!({"identity": "ci", "target": target, "purpose": "p", "task": task}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{issued}");
        leases.push(issued["lease"]["id"].as_str().unwrap().to_string());
    }
    let state = |lease: &str| {
        let path = format!("/v1/leases/{lease}");
        let broker = &broker;
        async move { broker.call(Method::GET, &path, None).await.2["state"].clone() }
    };

    let (status, _, listed) = broker
        .call(Method::GET, "/v1/leases?target=ops", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    let (status, _, one) = broker
        .post(&format!("/v1/leases/{}/revoke", leases[0]), json!({}))
        .await;
    assert_eq!(
        (status, one["total"].clone()),
        (StatusCode::OK, json!(1)),
        "{one}"
    );
    let (status, _, missing) = broker
        .post(
            &format!("/v1/leases/{}/revoke", mayfly_core::Uuid::new_v4()),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");

    // `api` selects `api` (already ended) and `api-b`, and not `ops`.
    let (status, _, by_prefix) = broker.post("/v1/revoke", json!({"prefix": "api"})).await;
    assert_eq!(
        (status, by_prefix["total"].clone()),
        (StatusCode::OK, json!(1)),
        "{by_prefix}"
    );
    assert_eq!(state(&leases[1]).await, "revoked");
    assert_eq!(state(&leases[2]).await, "active");
    let (status, _, by_target) = broker.post("/v1/revoke", json!({"target": "ops"})).await;
    assert_eq!(
        (status, by_target["total"].clone()),
        (StatusCode::OK, json!(2)),
        "{by_target}"
    );

    for (body, field) in [
        (json!({"prefix": ""}), "prefix"),
        (json!({"prefix": "A*"}), "prefix"),
        (json!({"target": "ops", "task": "t3"}), "task"),
        (json!({}), "task"),
    ] {
        let (status, _, problem) = broker.post("/v1/revoke", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }

    let (status, _, keys) = broker.call(Method::GET, "/v1/keys", None).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["alg"], "EdDSA");
    assert!(
        keys[0]["created_at"].as_str().unwrap().ends_with('Z'),
        "{keys:?}"
    );
    assert!(keys[0].get("private_sealed").is_none() && keys[0].get("public_jwk").is_none());
}
