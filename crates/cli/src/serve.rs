//! `mayfly serve`: configuration layering (defaults < mayfly.toml < MAYFLY_* < flags),
//! logging, first-start notes, and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use mayfly_core::duration::Ttl;
use mayfly_core::secret::SecretString;
use mayfly_server::{Config, Server};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "MAYFLY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8740].
    #[arg(long, env = "MAYFLY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory for the embedded store and generated master key [default: the user data dir].
    #[arg(long, env = "MAYFLY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Store URL, e.g. sqlite:///var/lib/mayfly/mayfly.db [default: <data-dir>/mayfly.db].
    #[arg(long, env = "MAYFLY_STORE")]
    store: Option<String>,
    /// fsync (default) or crash-safe.
    #[arg(long, env = "MAYFLY_DURABILITY")]
    durability: Option<String>,
    /// `iss` of issued tokens [default: http://<listen>].
    #[arg(long, env = "MAYFLY_ISSUER")]
    issuer: Option<String>,
    /// Master key file [default: <data-dir>/master.key]. MAYFLY_MASTER_KEY (base64) wins.
    #[arg(long, env = "MAYFLY_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Longest lifetime of any token.
    #[arg(long, env = "MAYFLY_TOKEN_MAX_TTL")]
    token_max_ttl: Option<Ttl>,
    /// Longest time from a request's first byte to the end of its headers [default: 10s].
    #[arg(long, env = "MAYFLY_HTTP_HEADER_TIMEOUT")]
    http_header_timeout: Option<Ttl>,
    /// Longest time to receive a request body; slower clients get 408 [default: 30s].
    #[arg(long, env = "MAYFLY_HTTP_BODY_TIMEOUT")]
    http_body_timeout: Option<Ttl>,
    /// How long a keep-alive connection may wait for its next request [default: 60s].
    #[arg(long, env = "MAYFLY_HTTP_IDLE_TIMEOUT")]
    http_idle_timeout: Option<Ttl>,
    /// Longest TLS handshake [default: 10s].
    #[arg(long, env = "MAYFLY_HTTP_HANDSHAKE_TIMEOUT")]
    http_handshake_timeout: Option<Ttl>,
    /// Connections served at once; more are closed at once [default: 4096].
    #[arg(long, env = "MAYFLY_HTTP_MAX_CONNECTIONS")]
    http_max_connections: Option<usize>,
    /// Log format: text or json.
    #[arg(long, env = "MAYFLY_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            toml::from_str::<Config>(&text)
                .map_err(|e| anyhow::anyhow!("config {}: {}", path.display(), e.message()))?
        }
        None => Config {
            data_dir: dirs::data_dir()
                .map(|d| d.join("mayfly"))
                .unwrap_or_else(|| PathBuf::from("mayfly-data")),
            ..Config::default()
        },
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = &args.data_dir {
        config.data_dir = v.clone();
    }
    if let Some(v) = &args.store {
        config.store = Some(v.clone());
    }
    if let Some(v) = &args.durability {
        config.durability = v.clone();
    }
    if let Some(v) = &args.issuer {
        config.issuer = Some(v.clone());
    }
    if let Some(v) = &args.master_key_file {
        config.master_key_file = Some(v.clone());
    }
    if let Some(v) = args.token_max_ttl {
        config.token_max_ttl = v;
    }
    if let Some(v) = args.http_header_timeout {
        config.http.header_timeout = v;
    }
    if let Some(v) = args.http_body_timeout {
        config.http.body_timeout = v;
    }
    if let Some(v) = args.http_idle_timeout {
        config.http.idle_timeout = v;
    }
    if let Some(v) = args.http_handshake_timeout {
        config.http.handshake_timeout = v;
    }
    if let Some(v) = args.http_max_connections {
        config.http.max_connections = v;
    }
    Ok(config)
}

fn init_logging(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAYFLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("--log-format {other:?}: expected text or json"),
    }
    Ok(())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format)?;
    let mut config = load_config(&args)?;
    let listener = Server::bind(config.listen).await?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    config.listen = addr;
    let master_key = std::env::var("MAYFLY_MASTER_KEY")
        .ok()
        .map(SecretString::new);
    let (server, bootstrap) = Server::prepare(config.clone(), master_key).await?;

    if let Some(path) = &bootstrap.master_key_created {
        eprintln!(
            "mayfly: generated a master key at {}\nmayfly: BACK IT UP. Every stored secret (signing keys, target credentials) is encrypted under it;\nmayfly: without it they cannot be recovered. Keep it apart from the database (or set MAYFLY_MASTER_KEY).",
            path.display()
        );
    }
    if let Some(token) = &bootstrap.operator_token {
        eprintln!(
            "mayfly: first start: created an operator token. It is shown only this once and stored only as a hash:\n\n    export MAYFLY_TOKEN={}\n",
            token.expose()
        );
    }
    eprintln!("mayfly: data dir {}", config.data_dir.display());
    eprintln!("mayfly: listening on {}://{addr}", server.scheme());
    tracing::info!(%addr, "mayfly serving");
    server.serve(listener, shutdown_signal()).await?;
    tracing::info!("mayfly stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
