//! The HTTP client every command but `serve` uses: the same API workloads use.

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::failure::{humanize, Failure};

pub struct Client {
    base: String,
    token: Option<String>,
    /// A task token, sent as `Txn-Token` with every request (`mayfly exec`).
    task_token: Option<String>,
    http: reqwest::Client,
}

/// The CA that signed a broker's TLS certificate when it is not in the system's store
/// (a private CA, a SPIFFE trust bundle): a PEM file.
pub const CA_FILE_ENV: &str = "MAYFLY_CA_FILE";

impl Client {
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        Client::with_identity(base, token, None)
    }

    /// A client that may also present a TLS client certificate (`identity_pem`: the
    /// certificate chain and its key, PEM), as a workload with an X.509-SVID does.
    pub fn with_identity(
        base: &str,
        token: Option<String>,
        identity_pem: Option<&[u8]>,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(std::time::Duration::from_secs(120))
            .connect_timeout(std::time::Duration::from_secs(5));
        if let Some(path) = std::env::var_os(CA_FILE_ENV) {
            let pem = std::fs::read(&path).with_context(|| {
                format!("{CA_FILE_ENV}: cannot read {}", path.to_string_lossy())
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!(
                    "{CA_FILE_ENV}: {} holds no PEM certificate",
                    path.to_string_lossy()
                )
            })? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(pem) = identity_pem {
            builder = builder.identity(
                reqwest::Identity::from_pem(pem)
                    .context("the X.509-SVID is not a PEM certificate with its private key")?,
            );
        }
        let http = builder.build().context("cannot build HTTP client")?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            task_token: None,
            http,
        })
    }

    /// The same client, presenting `task_token` (the task's `Txn-Token`) on every request.
    pub fn with_task_token(mut self, task_token: String) -> Self {
        self.task_token = Some(task_token);
        self
    }

    fn authorized(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(t) = &self.task_token {
            req = req.header("Txn-Token", t);
        }
        req
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.send(Method::GET, path, query, None).await
    }

    /// POSTs `body` (one of the API's request types) as JSON.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_value(body).context("cannot encode the request")?;
        self.send(Method::POST, path, &[], Some(body)).await
    }

    /// POSTs to an action endpoint that takes no fields (an empty JSON object).
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(
            Method::POST,
            path,
            &[],
            Some(Value::Object(Default::default())),
        )
        .await
    }

    /// PATCHes `body` (one of the API's update types) as JSON.
    pub async fn patch<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_value(body).context("cannot encode the request")?;
        self.send(Method::PATCH, path, &[], Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.send(Method::DELETE, path, query, None).await
    }

    pub async fn post_form<T: DeserializeOwned>(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> anyhow::Result<T> {
        let req = self.http.post(format!("{}{path}", self.base)).form(form);
        self.finish(self.authorized(req)).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let mut req = self.authorized(
            self.http
                .request(method, format!("{}{path}", self.base))
                .query(query),
        );
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.finish(req).await
    }

    async fn finish<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let response = req.send().await.map_err(|e| {
            Failure::Unreachable(if e.is_connect() {
                format!(
                    "cannot reach mayfly at {} (is `mayfly serve` running? set MAYFLY_ADDR)",
                    self.base
                )
            } else if e.is_timeout() {
                format!("mayfly at {} did not answer in time", self.base)
            } else {
                format!("request to {} failed: {e}", self.base)
            })
        })?;
        let status = response.status();
        let text = response.text().await.context("cannot read the response")?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .with_context(|| format!("unexpected response from mayfly: {}", truncate(&text)));
        }
        Err(Failure::Api {
            status: status.as_u16(),
            message: problem_line(status, &text),
        }
        .into())
    }
}

/// One plain line from a problem+json answer: the detail, and the field when named.
fn problem_line(status: StatusCode, text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(p) => {
            let detail = p
                .get("detail")
                .and_then(Value::as_str)
                .map(humanize)
                .unwrap_or_else(|| "request failed".into());
            let code = p.get("code").and_then(Value::as_str).unwrap_or("");
            let hint = if status == StatusCode::UNAUTHORIZED {
                " (set MAYFLY_TOKEN)"
            } else {
                ""
            };
            format!("{detail} [{} {code}]{hint}", status.as_u16())
        }
        Err(_) => format!("HTTP {}: {}", status.as_u16(), truncate(text)),
    }
}

fn truncate(text: &str) -> String {
    let one_line: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    one_line
}

/// An answer as the broker sent it beside its typed reading: `-o json` prints `raw`
/// untouched (fields a newer broker adds included), tables pick fields from `typed`.
pub struct Answer<T> {
    pub raw: Value,
    pub typed: T,
}

impl<T> Answer<T> {
    /// The same answer read another way (say, a view flattened for a table).
    pub fn map<U: From<T>>(self) -> Answer<U> {
        Answer {
            raw: self.raw,
            typed: self.typed.into(),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Answer<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Value::deserialize(d)?;
        let typed = T::deserialize(&raw).map_err(serde::de::Error::custom)?;
        Ok(Answer { raw, typed })
    }
}
