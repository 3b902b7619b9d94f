//! A minimal AMQP 0-9-1 client for tests against the local RabbitMQ (127.0.0.1:5672): a
//! real login (protocol header, `connection.start-ok` with PLAIN, `tune-ok`,
//! `connection.open` on a vhost), one channel in confirm mode, a passive `queue.declare`
//! (the queue's message count) and a confirmed `basic.publish`. Enough to prove what an
//! issued user can and cannot do, without an AMQP crate in the tree.
//!
//! A channel the server closes (a refused publish, `403 ACCESS_REFUSED`) is answered and
//! replaced by a fresh one, so the connection stays usable; a connection the server
//! closes (`320 CONNECTION_FORCED` from the management API) fails every later call.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const ADDR: &str = "127.0.0.1:5672";
pub const MANAGEMENT: &str = "http://127.0.0.1:15672";

/// Why an AMQP call failed.
#[derive(Debug)]
pub enum AmqpError {
    /// The TCP connection failed or ended.
    Io(String),
    /// The server closed the connection (`connection.close`): code and text.
    ConnectionClosed(u16, String),
    /// The server closed the channel (`channel.close`): code and text.
    ChannelClosed(u16, String),
    Protocol(String),
}

impl std::fmt::Display for AmqpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AmqpError::Io(e) => write!(f, "i/o: {e}"),
            AmqpError::ConnectionClosed(c, t) => write!(f, "connection closed: {c} {t}"),
            AmqpError::ChannelClosed(c, t) => write!(f, "channel closed: {c} {t}"),
            AmqpError::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;

/// An open connection with one channel in confirm mode.
pub struct Amqp {
    io: BufReader<TcpStream>,
    channel: u16,
    delivery_tag: u64,
    /// The server closed our channel; the next call opens a fresh one.
    reopen: bool,
}

fn shortstr(out: &mut Vec<u8>, s: &str) {
    out.push(s.len().min(255) as u8);
    out.extend_from_slice(&s.as_bytes()[..s.len().min(255)]);
}

fn longstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn method(class: u16, id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + args.len());
    p.extend_from_slice(&class.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(args);
    p
}

/// Reads a `shortstr` at `at`, returning it and the position after it.
fn read_shortstr(p: &[u8], at: usize) -> (String, usize) {
    let len = p.get(at).copied().unwrap_or(0) as usize;
    let end = (at + 1 + len).min(p.len());
    (
        String::from_utf8_lossy(p.get(at + 1..end).unwrap_or_default()).into_owned(),
        end,
    )
}

fn u16_at(p: &[u8], at: usize) -> u16 {
    p.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(0)
}

fn u32_at(p: &[u8], at: usize) -> u32 {
    p.get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// `(user, password, host, port, vhost)` of an `amqp://` URL (the vhost percent-decoded;
/// an empty path is `/`).
pub fn parse_url(url: &str) -> Result<(String, String, String, u16, String), AmqpError> {
    let rest = url
        .strip_prefix("amqp://")
        .ok_or_else(|| AmqpError::Protocol("only amqp:// URLs".into()))?;
    let (auth, hostpath) = rest
        .rsplit_once('@')
        .ok_or_else(|| AmqpError::Protocol("the URL has no credentials".into()))?;
    let (user, pass) = auth.split_once(':').unwrap_or((auth, ""));
    let (hostport, path) = hostpath.split_once('/').unwrap_or((hostpath, ""));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse()
                .map_err(|_| AmqpError::Protocol("bad port".into()))?,
        ),
        None => (hostport.to_string(), 5672),
    };
    let vhost = if path.is_empty() {
        "/".to_string()
    } else {
        decode(path)
    };
    Ok((decode(user), decode(pass), host, port, vhost))
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Amqp {
    /// Logs in with the credentials and vhost of an `amqp://` URL and opens a channel.
    pub async fn connect(url: &str) -> Result<Amqp, AmqpError> {
        let (user, pass, host, port, vhost) = parse_url(url)?;
        let mut c = Amqp::login(&host, port, &user, &pass).await?;
        c.open(&vhost).await?;
        Ok(c)
    }

    /// The handshake up to `tune-ok`: past it, the server has accepted the password.
    pub async fn login(host: &str, port: u16, user: &str, pass: &str) -> Result<Amqp, AmqpError> {
        let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect((host, port)))
            .await
            .map_err(|_| AmqpError::Io("connect timed out".into()))?
            .map_err(|e| AmqpError::Io(e.to_string()))?;
        let mut c = Amqp {
            io: BufReader::new(tcp),
            channel: 0,
            delivery_tag: 0,
            reopen: false,
        };
        c.write_raw(b"AMQP\x00\x00\x09\x01").await?;
        c.expect(0, 10, 10).await?; // connection.start
        let mut args = Vec::new();
        // client-properties: only the capability that makes a refused login answer with
        // `connection.close` (403) instead of just dropping the socket.
        let mut caps = Vec::new();
        shortstr(&mut caps, "authentication_failure_close");
        caps.push(b't');
        caps.push(1);
        let mut props = Vec::new();
        shortstr(&mut props, "capabilities");
        props.push(b'F');
        longstr(&mut props, &caps);
        longstr(&mut args, &props);
        shortstr(&mut args, "PLAIN");
        let mut response = vec![0u8];
        response.extend_from_slice(user.as_bytes());
        response.push(0);
        response.extend_from_slice(pass.as_bytes());
        longstr(&mut args, &response);
        shortstr(&mut args, "en_US");
        c.send_method(0, method(10, 11, &args)).await?;
        let tune = c.expect(0, 10, 30).await?;
        let channel_max = u16_at(&tune, 0);
        let frame_max = u32_at(&tune, 2);
        let mut args = Vec::new();
        args.extend_from_slice(&channel_max.to_be_bytes());
        args.extend_from_slice(&frame_max.to_be_bytes());
        args.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        c.send_method(0, method(10, 31, &args)).await?;
        Ok(c)
    }

    /// `connection.open` on `vhost`, then a channel in confirm mode.
    pub async fn open(&mut self, vhost: &str) -> Result<(), AmqpError> {
        let mut args = Vec::new();
        shortstr(&mut args, vhost);
        shortstr(&mut args, "");
        args.push(0);
        self.send_method(0, method(10, 40, &args)).await?;
        self.expect(0, 10, 41).await?;
        self.open_channel().await
    }

    async fn reopen_if_closed(&mut self) -> Result<(), AmqpError> {
        if self.reopen {
            self.reopen = false;
            self.open_channel().await?;
        }
        Ok(())
    }

    async fn open_channel(&mut self) -> Result<(), AmqpError> {
        self.channel += 1;
        self.delivery_tag = 0;
        let ch = self.channel;
        self.send_method(ch, method(20, 10, &[0])).await?;
        self.expect(ch, 20, 11).await?;
        self.send_method(ch, method(85, 10, &[0])).await?; // confirm.select
        self.expect(ch, 85, 11).await?;
        Ok(())
    }

    /// The number of ready messages in `queue` (a passive `queue.declare`).
    pub async fn message_count(&mut self, queue: &str) -> Result<u32, AmqpError> {
        self.reopen_if_closed().await?;
        let mut args = Vec::new();
        args.extend_from_slice(&0u16.to_be_bytes());
        shortstr(&mut args, queue);
        args.push(1); // passive
        args.extend_from_slice(&0u32.to_be_bytes()); // no arguments
        let ch = self.channel;
        self.send_method(ch, method(50, 10, &args)).await?;
        let ok = self.expect(ch, 50, 11).await?;
        let (_, at) = read_shortstr(&ok, 0);
        Ok(u32_at(&ok, at))
    }

    /// Publishes `body` to the default exchange with `routing_key` and waits for the
    /// broker's confirmation; a refusal is `ChannelClosed` (e.g. 403).
    pub async fn publish(&mut self, routing_key: &str, body: &[u8]) -> Result<(), AmqpError> {
        self.reopen_if_closed().await?;
        let ch = self.channel;
        let mut args = Vec::new();
        args.extend_from_slice(&0u16.to_be_bytes());
        shortstr(&mut args, "");
        shortstr(&mut args, routing_key);
        args.push(0);
        self.send_method(ch, method(60, 40, &args)).await?;
        let mut header = Vec::new();
        header.extend_from_slice(&60u16.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes());
        self.send_frame(FRAME_HEADER, ch, &header).await?;
        self.send_frame(FRAME_BODY, ch, body).await?;
        self.delivery_tag += 1;
        loop {
            let (class, id, args) = self.next_method(ch).await?;
            match (class, id) {
                (60, 80) => return Ok(()), // basic.ack
                (60, 120) => return Err(AmqpError::Protocol("publish nacked".into())),
                _ => {
                    let _ = args;
                }
            }
        }
    }

    async fn write_raw(&mut self, b: &[u8]) -> Result<(), AmqpError> {
        self.io
            .get_mut()
            .write_all(b)
            .await
            .map_err(|e| AmqpError::Io(e.to_string()))
    }

    async fn send_frame(
        &mut self,
        kind: u8,
        channel: u16,
        payload: &[u8],
    ) -> Result<(), AmqpError> {
        let mut f = Vec::with_capacity(payload.len() + 8);
        f.push(kind);
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(FRAME_END);
        self.write_raw(&f).await
    }

    async fn send_method(&mut self, channel: u16, payload: Vec<u8>) -> Result<(), AmqpError> {
        self.send_frame(FRAME_METHOD, channel, &payload).await
    }

    async fn read_frame(&mut self) -> Result<(u8, u16, Vec<u8>), AmqpError> {
        let mut head = [0u8; 7];
        self.io
            .read_exact(&mut head)
            .await
            .map_err(|e| AmqpError::Io(format!("the server ended the connection ({e})")))?;
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        if size > 16 << 20 {
            return Err(AmqpError::Protocol("frame too large".into()));
        }
        let mut payload = vec![0u8; size + 1];
        self.io
            .read_exact(&mut payload)
            .await
            .map_err(|e| AmqpError::Io(e.to_string()))?;
        if payload.pop() != Some(FRAME_END) {
            return Err(AmqpError::Protocol("bad frame end".into()));
        }
        Ok((head[0], u16::from_be_bytes([head[1], head[2]]), payload))
    }

    /// The next method frame on `channel` or 0, answering the server's closes.
    async fn next_method(&mut self, channel: u16) -> Result<(u16, u16, Vec<u8>), AmqpError> {
        loop {
            let (kind, ch, p) = self.read_frame().await?;
            if kind != FRAME_METHOD {
                continue; // heartbeats, content of deliveries we do not ask for
            }
            let class = u16_at(&p, 0);
            let id = u16_at(&p, 2);
            let args = p.get(4..).unwrap_or_default().to_vec();
            match (class, id) {
                (10, 50) => {
                    let code = u16_at(&args, 0);
                    let (text, _) = read_shortstr(&args, 2);
                    let _ = self.send_method(0, method(10, 51, &[])).await;
                    return Err(AmqpError::ConnectionClosed(code, text));
                }
                (20, 40) if ch == channel => {
                    let code = u16_at(&args, 0);
                    let (text, _) = read_shortstr(&args, 2);
                    self.send_method(ch, method(20, 41, &[])).await?;
                    // A fresh channel on the next call, so the session stays usable
                    // after a refusal.
                    self.reopen = true;
                    return Err(AmqpError::ChannelClosed(code, text));
                }
                _ if ch == channel || ch == 0 => return Ok((class, id, args)),
                _ => {}
            }
        }
    }

    async fn expect(&mut self, channel: u16, class: u16, id: u16) -> Result<Vec<u8>, AmqpError> {
        loop {
            let (c, i, args) = self.next_method(channel).await?;
            if (c, i) == (class, id) {
                return Ok(args);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (u, p, h, port, v) = parse_url("amqp://a:b%40c@127.0.0.1:5672/my%2Fvhost").unwrap();
        assert_eq!(
            (u.as_str(), p.as_str(), h.as_str(), port, v.as_str()),
            ("a", "b@c", "127.0.0.1", 5672, "my/vhost")
        );
        assert_eq!(parse_url("amqp://a:b@h").unwrap().4, "/");
        assert_eq!(parse_url("amqp://a:b@h/%2F").unwrap().4, "/");
    }
}
