//! Connection limits against the real binary: clients that trickle headers or bodies, idle
//! keep-alive connections, TLS handshakes that never finish, and connections beyond the
//! maximum are cut off. Deadlines are configured at one second so the tests are quick; the
//! assertions are on what the connection does (closed, answered), with generous bounds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{eventually_every, Broker, Options, BIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Far beyond every configured deadline: a connection still open then was not cut off.
const PATIENCE: Duration = Duration::from_secs(10);

fn broker(http: &str) -> Broker {
    let dir = common::scratch_dir();
    Broker::start_in(
        BIN,
        &dir,
        Options {
            config: Some(format!("[http]\n{http}")),
            ..Options::default()
        },
    )
}

async fn connect(broker: &Broker) -> TcpStream {
    let host = broker
        .addr
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    TcpStream::connect(host).await.unwrap()
}

/// Everything read until the peer closed, or `None` if it is still open after `within`.
async fn read_until_closed<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    within: Duration,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes `chunks` one every 300 ms until the peer stops taking them.
fn trickle(mut writer: tokio::net::tcp::OwnedWriteHalf, chunks: Vec<Vec<u8>>) {
    tokio::spawn(async move {
        for chunk in chunks {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
}

/// Reads one HTTP/1.1 response with a Content-Length body from a kept-alive connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "closed before a full response: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: mayfly\r\n\r\n";

#[tokio::test]
async fn a_client_trickling_headers_is_cut_off() {
    let broker = broker("header_timeout = \"1s\"\nidle_timeout = \"60s\"");
    let (mut reader, writer) = connect(&broker).await.into_split();
    // Headers that would take 9 s to complete, one line every 300 ms.
    let mut chunks = vec![b"GET /healthz HTTP/1.1\r\nHost: mayfly\r\n".to_vec()];
    chunks.extend((0..30).map(|i| format!("X-Slow-{i}: yes\r\n").into_bytes()));
    trickle(writer, chunks);
    let got = read_until_closed(&mut reader, PATIENCE)
        .await
        .expect("the connection is closed after the header timeout");
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "no request was served: {got:?}"
    );
}

#[tokio::test]
async fn a_client_trickling_a_body_is_answered_408_and_closed() {
    let broker = broker("body_timeout = \"1s\"");
    let (mut reader, writer) = connect(&broker).await.into_split();
    let head = format!(
        "POST /v1/identities HTTP/1.1\r\nHost: mayfly\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        broker.token
    );
    let mut chunks = vec![head.into_bytes()];
    chunks.extend((0..30).map(|_| b" ".to_vec()));
    trickle(writer, chunks);
    let got = read_until_closed(&mut reader, PATIENCE)
        .await
        .expect("the connection is closed after the body timeout");
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 408"), "{text}");
    assert!(
        text.contains("content-type: application/problem+json"),
        "{text}"
    );
    assert!(text.contains("\"code\":\"body_timeout\""), "{text}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    // The header deadline is far longer: idleness alone must close it.
    let broker = broker("header_timeout = \"60s\"\nidle_timeout = \"1s\"");
    let mut stream = connect(&broker).await;
    stream.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    assert!(
        read_until_closed(&mut stream, PATIENCE).await.is_some(),
        "the idle connection is closed after the idle timeout"
    );
}

#[tokio::test]
async fn a_keep_alive_connection_outlives_the_header_timeout_while_idle() {
    // Waiting between requests is idleness, not a slow head.
    let broker = broker("header_timeout = \"1s\"\nidle_timeout = \"60s\"");
    let mut stream = connect(&broker).await;
    stream.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stream.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_beyond_the_maximum_are_refused() {
    let broker = broker("max_connections = 2\nidle_timeout = \"60s\"");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&broker).await;
        stream.write_all(HEALTHZ).await.unwrap();
        assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let mut third = connect(&broker).await;
    let _ = third.write_all(HEALTHZ).await;
    let got = read_until_closed(&mut third, PATIENCE)
        .await
        .expect("the third connection is closed");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));

    // A freed slot serves again, and the refusal was counted.
    drop(held.pop());
    let request = b"GET /metrics HTTP/1.1\r\nHost: mayfly\r\nConnection: close\r\n\r\n";
    let metrics = eventually_every(PATIENCE, Duration::from_millis(100), || async {
        let mut stream = connect(&broker).await;
        let _ = stream.write_all(request).await;
        let got = read_until_closed(&mut stream, Duration::from_secs(2))
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&got).to_string();
        text.starts_with("HTTP/1.1 200").then_some(text)
    })
    .await
    .expect("a connection is served once one closes");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mayfly_connections_refused_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_tls_client_that_never_finishes_the_handshake_is_dropped() {
    let dir = common::scratch_dir();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let config = format!(
        "[tls]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\n\n[http]\nhandshake_timeout = \"1s\"\n",
        d = dir.display()
    );
    let broker = Broker::start_with_config(BIN, &dir, config);
    assert!(broker.addr.starts_with("https://"), "{}", broker.addr);
    let mut stream = connect(&broker).await;
    // The start of a TLS record, and then nothing.
    stream.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    assert!(
        read_until_closed(&mut stream, PATIENCE).await.is_some(),
        "the stalled handshake is dropped after the handshake timeout"
    );
}
