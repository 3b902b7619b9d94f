//! A local webhook receiver for the suites that check what the broker sends: it records
//! every request and answers 500 while told to fail, and `verify` checks a delivery's
//! signature exactly as a receiver would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request the listener received, and what it answered.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Delivery {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub fn event_id(&self) -> String {
        self.headers
            .get("mayfly-event-id")
            .cloned()
            .unwrap_or_default()
    }
}

/// A local HTTP receiver (plain tokio, one request per connection) that answers 500
/// while `failing` is set, else 200, and records every request.
pub struct Receiver {
    pub url: String,
    seen: Arc<Mutex<Vec<Delivery>>>,
    failing: Arc<AtomicBool>,
}

impl Receiver {
    pub async fn start(path: &str, failing: bool) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(AtomicBool::new(failing));
        let (s, f) = (seen.clone(), failing.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (seen, failing) = (s.clone(), f.clone());
                tokio::spawn(async move {
                    let Some((path, headers, body)) = read_request(&mut conn).await else {
                        return;
                    };
                    let status = if failing.load(Ordering::SeqCst) {
                        500
                    } else {
                        200
                    };
                    seen.lock().unwrap().push(Delivery {
                        path,
                        headers,
                        body,
                        status,
                    });
                    let reason = if status == 200 {
                        "OK"
                    } else {
                        "Internal Server Error"
                    };
                    let text = if status == 200 {
                        "ok"
                    } else {
                        "receiver is down"
                    };
                    let response = format!(
                        "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Receiver { url, seen, failing }
    }

    pub fn all(&self) -> Vec<Delivery> {
        self.seen.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> Vec<Delivery> {
        self.all().into_iter().filter(|d| d.status == 200).collect()
    }

    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

async fn read_request(
    conn: &mut tokio::net::TcpStream,
) -> Option<(String, BTreeMap<String, String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let path = lines.next()?.split_whitespace().nth(1)?.to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some((path, headers, body))
}

/// The receiver's check, written from the README and not from the broker's code: parse
/// `t=…,v1=…`, recompute HMAC-SHA256(secret, "<t>.<body>"), compare in constant time, and
/// refuse a timestamp more than five minutes away.
pub fn verify(secret: &str, d: &Delivery) -> Result<(), String> {
    let header = d
        .headers
        .get("mayfly-signature")
        .ok_or("no Mayfly-Signature header")?;
    let fields: BTreeMap<&str, &str> = header
        .split(',')
        .filter_map(|p| p.split_once('='))
        .collect();
    let t: i64 = fields
        .get("t")
        .ok_or("no t")?
        .parse()
        .map_err(|_| "bad t")?;
    let v1 = fields.get("v1").ok_or("no v1")?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if (now - t).abs() > 300 {
        return Err(format!("stale timestamp {t}"));
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&d.body);
    let expected: String = ring::hmac::sign(&key, &signed)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // ring's verify compares in constant time; the hex check above says what differs.
    let tag: Vec<u8> = (0..v1.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&v1[i..i + 2], 16).unwrap_or(0))
        .collect();
    ring::hmac::verify(&key, &signed, &tag)
        .map_err(|_| format!("signature mismatch: got {v1}, expected {expected}"))
}
