//! What the broker says about itself holds: discovery advertises only what is served, the
//! OpenAPI document declares every parameter, error and security requirement, every error
//! from the edge is problem+json, and metrics report the store without /healthz polling.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Broker, BIN};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROBLEM: &str = "application/problem+json";

#[tokio::test]
async fn discovery_advertises_only_what_is_served() {
    let broker = Broker::start(BIN);
    let (status, doc, _) = broker
        .call(
            reqwest::Method::GET,
            "/.well-known/openid-configuration",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{doc}");
    let doc = doc.as_object().unwrap();
    let mut urls = 0;
    for (key, value) in doc {
        let is_url =
            key.ends_with("_endpoint") || key.ends_with("_uri") || key == "service_documentation";
        if !is_url {
            continue;
        }
        let url = value.as_str().unwrap();
        let path = url
            .strip_prefix(&broker.addr)
            .unwrap_or_else(|| panic!("{key}: {url}"));
        let (status, body, _) = broker.call(reqwest::Method::GET, path, None, None).await;
        assert_ne!(status, 404, "{key} {url} is not served: {body}");
        urls += 1;
    }
    assert!(urls >= 3, "issuer metadata names its endpoints: {doc:?}");
    // Grant types, client authentication and response types belong to a token endpoint.
    if !doc.contains_key("token_endpoint") {
        for key in [
            "grant_types_supported",
            "token_endpoint_auth_methods_supported",
            "response_types_supported",
        ] {
            assert!(
                !doc.contains_key(key),
                "{key} without a token endpoint: {doc:?}"
            );
        }
    }
    assert!(
        !doc.contains_key("id_token_signing_alg_values_supported"),
        "no ID tokens are issued: {doc:?}"
    );
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.push((method.clone(), path.clone(), op));
        }
    }
    out
}

#[tokio::test]
async fn the_openapi_document_declares_parameters_errors_and_security() {
    let broker = Broker::start(BIN);
    let (status, doc, _) = broker
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    assert!(
        doc.get("security").is_none(),
        "no document-wide requirement"
    );
    let public = [
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
        "/oauth2/token",
        "/oauth2/revoke",
    ];
    // OAuth endpoints answer their own errors as RFC 6749 JSON (clients expect it);
    // only what the connection layer decides (408) is a problem there.
    let oauth = ["/oauth2/token", "/oauth2/revoke"];
    let ops = operations(&doc);
    assert!(ops.len() >= 29, "{}", ops.len());
    for (method, path, op) in &ops {
        let at = format!("{method} {path}");
        let params: Vec<(&str, &str)> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| (p["name"].as_str().unwrap(), p["in"].as_str().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        for segment in path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                assert!(
                    params.contains(&(name, "path")),
                    "{at}: path parameter {name}: {params:?}"
                );
            }
        }
        let responses = op["responses"].as_object().unwrap();
        if public.contains(&path.as_str()) {
            assert!(op.get("security").is_none(), "{at} is public");
        } else {
            assert_eq!(op["security"], serde_json::json!([{"bearer": []}]), "{at}");
            for status in ["401", "429"] {
                assert!(responses.contains_key(status), "{at}: {status}");
            }
        }
        if op.get("requestBody").is_some() {
            for status in ["400", "413"] {
                assert!(responses.contains_key(status), "{at}: {status}");
            }
        }
        for (status, response) in responses {
            let error = status.starts_with('4') || status.starts_with('5');
            if error && oauth.contains(&path.as_str()) {
                assert!(
                    response["content"].get(PROBLEM).is_some()
                        || response["content"]["application/json"]["schema"]["$ref"]
                            == "#/components/schemas/OAuthErrorBody",
                    "{at} {status} is neither an OAuth error nor a problem: {response}"
                );
            } else if error && (method.as_str(), path.as_str()) != ("get", "/healthz") {
                assert!(
                    response["content"].get(PROBLEM).is_some(),
                    "{at} {status} is not problem+json: {response}"
                );
            }
        }
    }
    // Listings declare their filters.
    for path in ["/v1/grants", "/v1/leases", "/v1/audit"] {
        let op = &doc["paths"][path]["get"];
        let names: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: no parameters"))
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"limit"), "{path}: {names:?}");
    }
}

#[tokio::test]
async fn framework_errors_are_problems() {
    let broker = Broker::start(BIN);
    // A method the path does not serve: 405 with Allow, as a problem.
    let resp = broker
        .http
        .put(broker.url("/v1/grants"))
        .bearer_auth(&broker.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert!(resp.headers().contains_key("allow"));
    assert_eq!(resp.headers()["content-type"], PROBLEM);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["status"].as_u64(), body["code"].as_str()),
        (Some(405), Some("method_not_allowed")),
        "{body}"
    );

    // Too many header fields: 431, as a problem.
    let host = broker.addr.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut request =
        String::from("GET /healthz HTTP/1.1\r\nHost: mayfly\r\nConnection: close\r\n");
    for i in 0..150 {
        request.push_str(&format!("X-Many-{i}: yes\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_string(&mut got),
    )
    .await
    .unwrap()
    .unwrap();
    let lower = got.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 431"), "{got}");
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{got}"
    );
}

#[tokio::test]
async fn store_up_is_measured_without_polling_healthz() {
    let broker = Broker::start(BIN);
    let (status, metrics, _) = broker
        .call(reqwest::Method::GET, "/metrics", None, None)
        .await;
    assert_eq!(status, 200);
    let text = metrics.as_str().unwrap();
    assert!(text.lines().any(|l| l == "mayfly_store_up 1"), "{text}");
}
