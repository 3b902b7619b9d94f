//! Accepting connections, plain or TLS: the connection limit, and the deadlines that stop a
//! slow or silent client from holding a connection (TLS handshake, request head, request
//! body, idle keep-alive).
//!
//! One accept loop serves both schemes, so the limits cannot differ between them. hyper's
//! own header timeout also runs while a keep-alive connection waits for its next request,
//! which would make the idle timeout the header timeout; so both deadlines are kept here
//! instead. The first byte of a request starts its header deadline; the router receiving
//! the request (its head is complete) stops it, and the body deadline takes over; the end
//! of the response starts the idle deadline. While a handler runs, no deadline applies: its
//! own work is bounded (store, provider deadlines), not the client's.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use mayfly_core::duration::Ttl;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::error::{status_problem, ApiError};
use crate::metrics::Metrics;
use crate::tls::PeerCertificates;
use crate::StartError;

/// `[http]`: connection limits. Every deadline is at least one second. Each also has a
/// `--http-*` flag and `MAYFLY_HTTP_*` variable (see [`crate::Config`]).
#[derive(Clone, Debug, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Longest time from a request's first byte to the end of its headers.
    #[arg(
        long = "http-header-timeout",
        id = "http_header_timeout",
        value_name = "HTTP_HEADER_TIMEOUT",
        env = "MAYFLY_HTTP_HEADER_TIMEOUT",
        default_value_t = HttpConfig::default().header_timeout,
    )]
    pub header_timeout: Ttl,
    /// Longest time to receive a request body, once its headers are in; slower clients get
    /// 408.
    #[arg(
        long = "http-body-timeout",
        id = "http_body_timeout",
        value_name = "HTTP_BODY_TIMEOUT",
        env = "MAYFLY_HTTP_BODY_TIMEOUT",
        default_value_t = HttpConfig::default().body_timeout,
    )]
    pub body_timeout: Ttl,
    /// How long a keep-alive connection may wait for its next request.
    #[arg(
        long = "http-idle-timeout",
        id = "http_idle_timeout",
        value_name = "HTTP_IDLE_TIMEOUT",
        env = "MAYFLY_HTTP_IDLE_TIMEOUT",
        default_value_t = HttpConfig::default().idle_timeout,
    )]
    pub idle_timeout: Ttl,
    /// Longest TLS handshake.
    #[arg(
        long = "http-handshake-timeout",
        id = "http_handshake_timeout",
        value_name = "HTTP_HANDSHAKE_TIMEOUT",
        env = "MAYFLY_HTTP_HANDSHAKE_TIMEOUT",
        default_value_t = HttpConfig::default().handshake_timeout,
    )]
    pub handshake_timeout: Ttl,
    /// Connections served at once; connections beyond it are closed at once.
    #[arg(
        long = "http-max-connections",
        id = "http_max_connections",
        value_name = "HTTP_MAX_CONNECTIONS",
        env = "MAYFLY_HTTP_MAX_CONNECTIONS",
        default_value_t = HttpConfig::default().max_connections,
    )]
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout: Ttl::from_secs(10),
            body_timeout: Ttl::from_secs(30),
            idle_timeout: Ttl::from_secs(60),
            handshake_timeout: Ttl::from_secs(10),
            max_connections: 4096,
        }
    }
}

fn at_least_a_second(ttl: Ttl) -> Duration {
    Duration::from_secs(ttl.as_secs().max(1))
}

/// Requests with more header fields than this, or more header bytes, are answered 431.
/// hyper's own limits (above these) answer 431 without a body, so ours come first.
const MAX_HEADERS: usize = 100;
const MAX_HEADER_BYTES: usize = 32 * 1024;
/// hyper's read buffer: bounds the head it will buffer (and closes with a bare 431 past
/// it), well above [`MAX_HEADER_BYTES`] and [`crate::BODY_LIMIT`].
const READ_BUFFER: usize = 128 * 1024;

/// Longest wait, on shutdown, for open connections to finish their requests.
const DRAIN: Duration = Duration::from_secs(30);

/// Answers requests whose head is too large with a problem instead of hyper's bare 431.
pub async fn limit_headers(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + request.uri().path().len()
        + request.uri().query().map_or(0, str::len);
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        let mut response = status_problem(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "request head is larger than the limit of {MAX_HEADERS} fields or {MAX_HEADER_BYTES} bytes"
            ),
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

/// Reads the request body within `timeout` before the handler runs; a client that trickles
/// it is answered 408 and the connection is closed. Reading stops past
/// [`crate::BODY_LIMIT`], and the handler's own limit answers (and audits) the oversize body.
pub async fn read_body_within(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, mut body) = request.into_parts();
    let close = |mut response: Response| {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    };
    let mut bytes = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                bytes.extend_from_slice(&data);
                if bytes.len() > crate::BODY_LIMIT {
                    break;
                }
            }
        }
        Ok::<(), axum::Error>(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => close(
            ApiError::BadRequest {
                field: None,
                detail: format!("cannot read the request body: {e}"),
            }
            .into_response(),
        ),
        Err(_) => close(status_problem(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {}s",
                timeout.as_secs()
            ),
        )),
    }
}

/// What a connection is doing, for its deadlines.
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

struct Phase {
    /// Requests whose head is in and whose response is not yet produced.
    in_flight: usize,
    /// When the first byte of the next request arrived, while its head is incomplete.
    head_since: Option<Instant>,
    /// When the connection last became idle (opened, or finished a response).
    idle_since: Instant,
}

#[derive(Clone, Copy, Debug)]
enum Expiry {
    Header,
    Idle,
}

impl Expiry {
    fn as_str(self) -> &'static str {
        match self {
            Expiry::Header => "header",
            Expiry::Idle => "idle",
        }
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            phase: Mutex::new(Phase {
                in_flight: 0,
                head_since: None,
                idle_since: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes_read(&self) {
        let mut phase = self.phase();
        if phase.in_flight == 0 && phase.head_since.is_none() {
            phase.head_since = Some(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        {
            let mut phase = self.phase();
            phase.in_flight += 1;
            phase.head_since = None;
        }
        self.changed.notify_one();
        InFlight(self.clone())
    }

    fn deadline(&self, limits: &Deadlines) -> Option<(Instant, Expiry)> {
        let phase = self.phase();
        if phase.in_flight > 0 {
            None
        } else if let Some(since) = phase.head_since {
            Some((since + limits.header, Expiry::Header))
        } else {
            Some((phase.idle_since + limits.idle, Expiry::Idle))
        }
    }
}

/// Marks a request in flight until its response is produced (or the request is dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut phase = self.0.phase();
            phase.in_flight = phase.in_flight.saturating_sub(1);
            if phase.in_flight == 0 {
                phase.idle_since = Instant::now();
            }
        }
        self.0.changed.notify_one();
    }
}

/// A connection's stream, reporting each read to its [`Activity`].
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[derive(Clone, Copy)]
struct Deadlines {
    header: Duration,
    idle: Duration,
    handshake: Duration,
}

/// Accepts connections until `shutdown` resolves, serving `app` on each (over TLS when
/// `tls` is set); then lets open connections finish their requests, for at most [`DRAIN`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    config: &HttpConfig,
    app: Router,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let limits = Deadlines {
        header: at_least_a_second(config.header_timeout),
        idle: at_least_a_second(config.idle_timeout),
        handshake: at_least_a_second(config.handshake_timeout),
    };
    let app = app.layer(axum::middleware::from_fn_with_state(
        at_least_a_second(config.body_timeout),
        read_body_within,
    ));
    let max =
        u32::try_from(config.max_connections.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max as usize));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: retrying at once would spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closing at once costs nothing; answering would cost a handshake or a parse.
            metrics.connections_refused.inc();
            tracing::debug!(%remote, "connection limit reached; closing");
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let stopping = stopping.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Some(acceptor) = acceptor else {
                serve_connection(tcp, remote, None, app, limits, stopping, &metrics).await;
                return;
            };
            let stream = match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    // A client certificate that is not a valid SVID ends here.
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.connection_timeout("handshake");
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let peer = stream.get_ref().1.peer_certificates().map(|c| {
                PeerCertificates(Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()))
            });
            serve_connection(stream, remote, peer, app, limits, stopping, &metrics).await;
        });
    }
    drop(stop);
    if tokio::time::timeout(DRAIN, slots.acquire_many(max))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
    Ok(())
}

/// Serves HTTP/1.1 on one connection until it ends, a deadline passes, or shutdown.
async fn serve_connection<S>(
    stream: S,
    remote: SocketAddr,
    peer: Option<PeerCertificates>,
    app: Router,
    limits: Deadlines,
    mut stopping: watch::Receiver<bool>,
    metrics: &Metrics,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = hyper_util::rt::TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |mut request: hyper::Request<hyper::body::Incoming>| {
            let in_flight = activity.request_started();
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo::<SocketAddr>(remote));
            if let Some(p) = &peer {
                request.extensions_mut().insert(p.clone());
            }
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(Body::new)).await;
                drop(in_flight);
                response
            }
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        // Kept by `Activity` instead (see the module doc); hyper's would end idle
        // keep-alive connections after the header timeout.
        .header_read_timeout(None)
        .max_headers(MAX_HEADERS * 2)
        .max_buf_size(READ_BUFFER)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((at, expiry)) = activity.deadline(&limits) {
                    if at <= Instant::now() {
                        metrics.connection_timeout(expiry.as_str());
                        tracing::debug!(%remote, timeout = expiry.as_str(), "closing connection");
                        return;
                    }
                }
            }
            _ = activity.changed.notified() => {}
            _ = stopping.changed(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}
