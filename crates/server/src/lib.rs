//! The Mayfly broker as a server: HTTP API (axum), token signing, key management and the
//! background schedulers, wired to the adapters (store, authenticators, policy, providers)
//! through their core traits.
//!
//! [`app`] builds the router from a state (handlers are tested without a socket);
//! [`Server::prepare`] performs first-start bootstrap and [`Server::serve`] runs it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use mayfly_core::auth::Authenticator;
use mayfly_core::duration::Ttl;
use mayfly_core::policy::{PolicyEngine, TargetAllowList};
use mayfly_core::seal::MasterKey;
use mayfly_core::secret::SecretString;
use mayfly_core::store::{OperatorTokenRecord, Store};
use mayfly_identity::oidc::{OidcAuthenticator, OidcIssuerConfig};
use mayfly_identity::operator::{
    generate_operator_token, hash_operator_token, OperatorTokenAuthenticator,
};
use mayfly_identity::AuthChain;
use serde::Deserialize;

pub mod api;
pub mod auth;
pub mod auth_failures;
pub mod broker;
pub mod checkpoint;
pub mod conn;
pub mod dpop;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod openapi;
pub mod providers;
pub mod scheduler;
pub mod state;
pub mod task_token;
pub mod tls;
pub mod token;
pub mod webhooks;

pub use state::AppState;

/// Crash-safety test hook: with `MAYFLY_CRASH_AT=<point>` the process aborts at that
/// point, exactly as `kill -9` would, so tests can stop the broker between write-ahead and
/// creation, or between creation and commit. Read once; unset in normal operation.
pub fn crash_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("MAYFLY_CRASH_AT").ok())
        .as_deref()
        == Some(point)
    {
        eprintln!("mayfly: MAYFLY_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}

/// Largest accepted request body. Grant requests are small; anything bigger is a mistake
/// or an attack.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Server configuration. This one struct is the `mayfly serve` flag set (each doc comment
/// is the option's `--help`), the `mayfly.toml` schema, the `MAYFLY_*` variables and the
/// defaults ([`Config::default`], which the flags show as theirs). The CLI layers them:
/// defaults < file < environment < flags. Sections (`[auth]`, `[policy]`, `[tls]`) exist
/// only in the file; `[http]` also has flags.
#[derive(Clone, Debug, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// TOML configuration file.
    // Not a file key: a file naming another file would be a loop, so `config = …` in the
    // file is refused as an unknown key.
    #[arg(long, env = "MAYFLY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "MAYFLY_LISTEN", default_value_t = Config::default().listen)]
    pub listen: SocketAddr,
    /// Data directory for the embedded store and generated master key.
    #[arg(long, env = "MAYFLY_DATA_DIR", default_value_os_t = Config::default().data_dir)]
    pub data_dir: PathBuf,
    /// Store URL, e.g. sqlite:///var/lib/mayfly/mayfly.db or postgres://mayfly@db/mayfly
    /// [default: sqlite://<data-dir>/mayfly.db].
    #[arg(long, env = "MAYFLY_STORE")]
    pub store: Option<String>,
    /// How hard the embedded store syncs each commit (SQLite only).
    #[arg(
        long,
        env = "MAYFLY_DURABILITY",
        value_enum,
        default_value_t = Config::default().durability,
    )]
    pub durability: Durability,
    /// `iss` of issued tokens, base of the discovery URLs [default: http://<listen>].
    #[arg(long, env = "MAYFLY_ISSUER")]
    pub issuer: Option<String>,
    /// Key-encryption key file (base64, 32 bytes), generated on first start
    /// [default: <data-dir>/master.key]. MAYFLY_MASTER_KEY (the key itself) wins.
    #[arg(long, env = "MAYFLY_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Longest lifetime of any token; retired signing keys stay published this long.
    #[arg(long, env = "MAYFLY_TOKEN_MAX_TTL", default_value_t = Config::default().token_max_ttl)]
    pub token_max_ttl: Ttl,
    /// Longest wait for a credential provider call (issue, renew, revoke, reconcile) on a
    /// target that sets no `timeout_seconds` of its own.
    #[arg(
        long,
        env = "MAYFLY_PROVIDER_TIMEOUT",
        default_value_t = Config::default().provider_timeout,
    )]
    pub provider_timeout: Ttl,
    /// How often external targets are reconciled (users with Mayfly's prefix and no live
    /// lease are dropped) and stale `creating` leases cleaned up.
    #[arg(
        long,
        env = "MAYFLY_RECONCILE_INTERVAL",
        default_value_t = Config::default().reconcile_interval,
    )]
    pub reconcile_interval: Ttl,
    /// Log format (the filter is MAYFLY_LOG, e.g. `info,sqlx::query=debug`).
    #[arg(
        long,
        env = "MAYFLY_LOG_FORMAT",
        value_enum,
        default_value_t = Config::default().log_format,
    )]
    pub log_format: LogFormat,
    /// `[auth]`: how callers are identified.
    #[arg(skip)]
    pub auth: AuthConfig,
    /// `[policy]`: runtime authorisation.
    #[arg(skip)]
    pub policy: PolicyConfig,
    /// Serve HTTPS (and accept X.509-SVID client certificates when SPIFFE X.509 bundles
    /// are configured).
    #[arg(skip)]
    pub tls: Option<tls::TlsConfig>,
    /// `[http]`: connection limits and deadlines.
    #[command(flatten)]
    pub http: conn::HttpConfig,
    /// `[[webhooks]]`: outgoing notifications (see [`webhooks`]).
    #[arg(skip)]
    pub webhooks: Vec<webhooks::WebhookConfig>,
    /// `[audit]`: signed checkpoints of the audit chain (see [`checkpoint`]).
    #[arg(skip)]
    pub audit: AuditConfig,
}

/// `[audit]`: how often the broker signs the chain head with its audit key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How often a signed checkpoint of the chain head is taken (at least 1s).
    pub checkpoint_interval: Ttl,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_interval: Ttl::from_secs(5 * 60),
        }
    }
}

/// How hard the embedded store syncs a commit (`durability`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Every acknowledged grant survives power loss.
    #[default]
    Fsync,
    /// Survives a process crash; the last moments may be lost on power loss.
    CrashSafe,
}

impl From<Durability> for mayfly_store::Durability {
    fn from(d: Durability) -> Self {
        match d {
            Durability::Fsync => mayfly_store::Durability::Fsync,
            Durability::CrashSafe => mayfly_store::Durability::CrashSafe,
        }
    }
}

/// How `mayfly serve` writes its log (`log_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Runtime authorisation. With a `dir`, Cedar policies decide every grant (default deny)
/// and the directory is hot-reloaded; without one, each target's `allow` list decides.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Directory of `.cedar` policies (and optional `.cedarschema` fragments).
    pub dir: Option<PathBuf>,
    /// Fixed UTC offset for `context.now.hour`/`weekday`, e.g. `+01:00`.
    pub utc_offset: String,
    /// How often the directory is checked for changes.
    pub reload_interval: Ttl,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dir: None,
            utc_offset: "+00:00".into(),
            reload_interval: Ttl::from_secs(2),
        }
    }
}

/// The credential kinds a target may have: the broker's own tokens and every built-in
/// provider's, as registered in [`Server::prepare`] (for `mayfly target add --help`).
pub fn credential_kinds() -> Vec<&'static str> {
    std::iter::once(token::KIND)
        .chain(
            mayfly_providers::builtin()
                .iter()
                .map(|p| mayfly_core::provider::Provider::kind(p.as_ref())),
        )
        .collect()
}

/// Parses `+01:00` / `-05:30` / `Z`.
pub fn parse_utc_offset(text: &str) -> Result<time::UtcOffset, String> {
    if text == "Z" || text == "UTC" {
        return Ok(time::UtcOffset::UTC);
    }
    let format = time::macros::format_description!("[offset_hour sign:mandatory]:[offset_minute]");
    time::UtcOffset::parse(text, &format)
        .map_err(|_| format!("utc_offset {text:?}: expected a form like +01:00"))
}

/// Loads the policy directory with the configured options.
pub fn load_policy(
    config: &PolicyConfig,
    dir: &Path,
) -> Result<mayfly_policy::ReloadingEngine, StartError> {
    let options = mayfly_policy::LoadOptions {
        utc_offset: parse_utc_offset(&config.utc_offset).map_err(StartError::Config)?,
        ..Default::default()
    };
    mayfly_policy::ReloadingEngine::new(dir, options).map_err(|e| {
        let lines: Vec<String> = e.diagnostics.iter().map(|d| d.to_string()).collect();
        StartError::Config(format!("policy {}: {}", dir.display(), lines.join("; ")))
    })
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Trusted OIDC issuers whose JWTs identify workloads.
    pub oidc: Vec<OidcIssuerConfig>,
    /// SPIFFE trust domains: JWT-SVIDs verified against each domain's bundle.
    pub spiffe: Vec<mayfly_identity::SpiffeTrustDomainConfig>,
    /// Failed authentication: per-source rate limit and audit aggregation.
    pub failures: auth_failures::FailureLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            config: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8740)),
            // The user's data directory (e.g. ~/.local/share/mayfly), so a zero-config start
            // keeps its state in one place whatever the working directory.
            // Empty when the platform has none (no HOME): `prepare` then refuses to start
            // rather than keep state in whatever the working directory happens to be.
            data_dir: dirs::data_dir()
                .map(|d| d.join("mayfly"))
                .unwrap_or_default(),
            store: None,
            durability: Durability::default(),
            issuer: None,
            master_key_file: None,
            token_max_ttl: Ttl::from_secs(24 * 3600),
            provider_timeout: Ttl::from_secs(30),
            reconcile_interval: Ttl::from_secs(15 * 60),
            log_format: LogFormat::default(),
            auth: AuthConfig::default(),
            policy: PolicyConfig::default(),
            tls: None,
            http: conn::HttpConfig::default(),
            webhooks: Vec::new(),
            audit: AuditConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("master key {path}: {reason}")]
    MasterKey { path: String, reason: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] mayfly_core::store::StoreError),
    #[error("signing keys: {0}")]
    Keys(#[from] keys::KeyError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// What first start created, for the CLI to tell the operator once.
#[derive(Debug, Default)]
pub struct Bootstrap {
    /// The first operator token, not yet recorded: show it, then
    /// [`Server::record_bootstrap_token`]. A start that dies in between recorded nothing,
    /// so the next start makes (and shows) a new one: no token is ever stored unseen.
    pub operator_token: Option<SecretString>,
    /// Set when a master key was generated; it must be backed up.
    pub master_key_created: Option<PathBuf>,
}

pub struct Server {
    state: AppState,
    tls: Option<Arc<rustls::ServerConfig>>,
    http: conn::HttpConfig,
    policy_reload: Ttl,
    checkpoint_every: Duration,
    reconcile_every: Duration,
    /// The store is this process's alone (embedded SQLite): no other replica issues.
    exclusive_store: bool,
    webhooks: webhooks::Webhooks,
}

/// Builds the router for a state.
pub fn app(state: AppState) -> Router {
    api::routes()
        .fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                // The path is the caller's own text: bounded, so a long one makes no long
                // answer.
                let path: String = uri.path().chars().take(200).collect();
                error::ApiError::NoRoute {
                    method: method.to_string(),
                    path,
                }
            },
        )
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(conn::limit_headers))
        .layer(axum::middleware::map_response(
            error::problem_for_bare_errors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track_http,
        ))
        .with_state(state)
}

fn load_master_key(
    config: &Config,
    from_env: Option<SecretString>,
) -> Result<(MasterKey, Option<PathBuf>), StartError> {
    if let Some(text) = from_env {
        let key = MasterKey::from_base64(text.expose()).map_err(|e| StartError::MasterKey {
            path: "MAYFLY_MASTER_KEY".into(),
            reason: e.to_string(),
        })?;
        return Ok((key, None));
    }
    let path = config
        .master_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("master.key"));
    let bad = |reason: String| StartError::MasterKey {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::File::open(&path) {
        Ok(file) => Ok((read_key_file(file, &path)?, None)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = MasterKey::generate().map_err(|e| bad(e.to_string()))?;
            write_private_file(&path, key.to_base64().as_bytes())
                .map_err(|e| bad(e.to_string()))?;
            Ok((key, Some(path)))
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Reads a master key file, refusing one that group or others can access.
fn read_key_file(mut file: std::fs::File, path: &Path) -> Result<MasterKey, StartError> {
    let bad = |reason: String| StartError::MasterKey {
        path: path.display().to_string(),
        reason,
    };
    // The key unlocks every sealed secret in the store: a copy that group or others can
    // read is theirs, and one they can write is a key they chose.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file
            .metadata()
            .map_err(|e| bad(e.to_string()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "group or others can access it (mode {:04o}); run `chmod 600 {}`",
                mode & 0o7777,
                path.display()
            )));
        }
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(|e| bad(e.to_string()))?;
    MasterKey::from_base64(&text).map_err(|e| bad(e.to_string()))
}

/// The master key of an existing deployment, for offline maintenance: from `from_env`
/// (`MAYFLY_MASTER_KEY`) or the file at `path`. Unlike a first start it never generates
/// one: a missing key is an error that says where it was looked for.
pub fn existing_master_key(
    path: &Path,
    from_env: Option<SecretString>,
) -> Result<MasterKey, StartError> {
    if let Some(text) = from_env {
        return MasterKey::from_base64(text.expose()).map_err(|e| StartError::MasterKey {
            path: "MAYFLY_MASTER_KEY".into(),
            reason: e.to_string(),
        });
    }
    match std::fs::File::open(path) {
        Ok(file) => read_key_file(file, path),
        Err(e) => Err(StartError::MasterKey {
            path: path.display().to_string(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "not found: the master key is needed to prove this is the deployment's operator; pass --master-key-file or set MAYFLY_MASTER_KEY".into()
            } else {
                e.to_string()
            },
        }),
    }
}

/// Creates a file readable only by its owner, failing if it exists (never overwrite a key).
fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// What can be checked of a configuration without writing anything: the authenticators,
/// TLS and the policy set, built (files read, settings validated) before the data
/// directory, master key or store is touched.
struct Checked {
    svid: Option<mayfly_identity::JwtSvidAuthenticator>,
    oidc: Option<OidcAuthenticator>,
    x509: Option<mayfly_identity::X509SvidVerifier>,
    tls: Option<Arc<rustls::ServerConfig>>,
    policy: Option<mayfly_policy::ReloadingEngine>,
    webhooks: webhooks::Webhooks,
}

impl Checked {
    fn from_config(config: &Config) -> Result<Checked, StartError> {
        let spiffe = &config.auth.spiffe;
        let svid = if spiffe.iter().any(|d| d.jwt_bundle_file.is_some()) {
            Some(
                mayfly_identity::JwtSvidAuthenticator::new(spiffe.clone())
                    .map_err(|e| StartError::Config(e.to_string()))?,
            )
        } else {
            None
        };
        let oidc = if config.auth.oidc.is_empty() {
            None
        } else {
            Some(
                OidcAuthenticator::new(config.auth.oidc.clone())
                    .map_err(|e| StartError::Config(e.to_string()))?,
            )
        };
        let x509 = if spiffe.iter().any(|d| d.x509_bundle_file.is_some()) {
            if config.tls.is_none() {
                return Err(StartError::Config(
                    "auth.spiffe x509_bundle_file needs [tls]: X.509-SVIDs are client certificates"
                        .into(),
                ));
            }
            Some(
                mayfly_identity::X509SvidVerifier::new(spiffe.clone())
                    .map_err(|e| StartError::Config(e.to_string()))?,
            )
        } else {
            None
        };
        let tls = match &config.tls {
            Some(t) => Some(tls::server_config(t, x509.as_ref())?),
            None => None,
        };
        let policy = match &config.policy.dir {
            Some(dir) => {
                let engine = load_policy(&config.policy, dir)?;
                let policies = engine.current().policy_count();
                tracing::info!(dir = %dir.display(), policies, "Cedar policies loaded");
                Some(engine)
            }
            None => None,
        };
        if let Some(url) = &config.store {
            mayfly_store::backend_of(url)?;
        }
        let webhooks = webhooks::Webhooks::load(&config.webhooks, config.config.as_deref())?;
        Ok(Checked {
            svid,
            oidc,
            x509,
            tls,
            policy,
            webhooks,
        })
    }
}

impl Server {
    /// Opens the store, loads or creates the master key, signing key and first operator
    /// token, and wires the adapters.
    pub async fn prepare(
        config: Config,
        master_key_env: Option<SecretString>,
    ) -> Result<(Server, Bootstrap), StartError> {
        let mut bootstrap = Bootstrap::default();
        // Everything that can be wrong with the configuration is found before anything is
        // written: a first start that fails must leave no master key, database or token
        // behind (a token row nobody saw would lock the operator out for good).
        if config.data_dir.as_os_str().is_empty() {
            return Err(StartError::Config(
                "no data directory: the platform has none (HOME is not set); set --data-dir or MAYFLY_DATA_DIR".into(),
            ));
        }
        let checked = Checked::from_config(&config)?;
        // Owner-only, like everything in it: the database and, by default, the master key.
        let mut data_dir = std::fs::DirBuilder::new();
        data_dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut data_dir, 0o700);
        data_dir
            .create(&config.data_dir)
            .map_err(|source| StartError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
        let (master, created) = load_master_key(&config, master_key_env)?;
        bootstrap.master_key_created = created;
        let url = config
            .store
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", config.data_dir.join("mayfly.db").display()));
        let backend = mayfly_store::backend_of(&url)?;
        let store: Arc<dyn Store> = mayfly_store::open(&url, config.durability.into()).await?;

        let master = Arc::new(master);
        let keys = Arc::new(
            keys::Keyring::load_or_create(store.clone(), master.clone(), config.token_max_ttl)
                .await?,
        );
        let checkpoints = Arc::new(checkpoint::Checkpoints::new(
            store.clone(),
            keys::AuditKey::load_or_create(&store, &master).await?,
        ));

        if store.count_operator_tokens().await? == 0 {
            let (token, _) =
                generate_operator_token().map_err(|e| StartError::Config(e.to_string()))?;
            bootstrap.operator_token = Some(token);
        }

        let Checked {
            svid,
            oidc,
            x509,
            tls,
            policy,
            webhooks,
        } = checked;
        let mut authenticators: Vec<Arc<dyn Authenticator>> =
            vec![Arc::new(OperatorTokenAuthenticator::new(store.clone()))];
        // JWT-SVIDs first: they claim only tokens whose subject is a SPIFFE ID, whereas the
        // OIDC authenticator rejects any JWT from an issuer it does not know.
        if let Some(svid) = svid {
            for (domain, result) in svid.load_bundles() {
                match result {
                    Ok(keys) => tracing::info!(%domain, keys, "loaded SPIFFE JWT bundle"),
                    Err(e) => {
                        tracing::warn!(%domain, error = %e, "cannot load SPIFFE JWT bundle yet; retrying on use")
                    }
                }
            }
            authenticators.push(Arc::new(svid));
        }
        if let Some(oidc) = oidc {
            // Load issuer keys now so the first workload does not wait, and so a wrong
            // URL shows up in the start-up log rather than as a 401 later.
            for (issuer, result) in oidc.prefetch().await {
                match result {
                    Ok(keys) => tracing::info!(%issuer, keys, "loaded OIDC issuer keys"),
                    Err(e) => {
                        tracing::warn!(%issuer, error = %e, "cannot load OIDC issuer keys yet; retrying on use")
                    }
                }
            }
            authenticators.push(Arc::new(oidc));
        }
        if let Some(verifier) = &x509 {
            for (domain, result) in verifier.load_bundles() {
                if let Err(e) = result {
                    tracing::warn!(%domain, error = %e, "cannot load SPIFFE X.509 bundle yet; retrying on use");
                }
            }
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let issuer = config
            .issuer
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", config.listen));
        let metrics = Arc::new(metrics::Metrics::new());
        let mut providers = state::Providers::default();
        // At least a second: a zero deadline would fail every call before it starts.
        let deadline = Duration::from_secs(config.provider_timeout.as_secs().max(1));
        let mut builtin: Vec<Arc<dyn mayfly_core::provider::Provider>> = vec![Arc::new(
            token::TokenProvider::new(keys.clone(), issuer.clone()),
        )];
        builtin.extend(mayfly_providers::builtin());
        for provider in builtin {
            providers.register(Arc::new(providers::Guarded::new(
                provider,
                deadline,
                metrics.clone(),
            )));
        }
        let (policy, cedar): (Arc<dyn PolicyEngine>, _) = match policy {
            Some(engine) => {
                let engine = Arc::new(engine);
                (engine.clone() as Arc<dyn PolicyEngine>, Some(engine))
            }
            None => (Arc::new(TargetAllowList), None),
        };

        let state = AppState(Arc::new(state::Inner {
            store,
            auth: AuthChain::new(authenticators),
            policy,
            cedar,
            x509,
            providers,
            keys,
            checkpoints,
            metrics,
            master,
            revoker_wake: tokio::sync::Notify::new(),
            auth_failures: auth_failures::AuthFailures::new(config.auth.failures),
            // An issuance on another replica may run as long as its target allows; only
            // after twice the longest of those is a `creating` lease surely abandoned.
            creating_grace: deadline.max(providers::LONGEST_TARGET_TIMEOUT) * 2,
            issuer,
            token_max_ttl: config.token_max_ttl,
            expiry_wake: tokio::sync::Notify::new(),
            next_expiry_wake_ms: AtomicI64::new(0),
            dpop: dpop::DpopVerifier::new(),
        }));
        let policy_reload = config.policy.reload_interval;
        let checkpoint_every =
            Duration::from_secs(config.audit.checkpoint_interval.as_secs().max(1));
        let exclusive_store = backend == mayfly_store::Backend::Sqlite;
        let reconcile_every = Duration::from_secs(config.reconcile_interval.as_secs().max(10));
        Ok((
            Server {
                state,
                tls,
                http: config.http.clone(),
                policy_reload,
                checkpoint_every,
                reconcile_every,
                exclusive_store,
                webhooks,
            },
            bootstrap,
        ))
    }

    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Records the first operator token [`Server::prepare`] made, once it has been shown.
    /// `Ok(false)` when another replica starting at the same moment recorded its own first:
    /// this token then does not work and the other one does.
    pub async fn record_bootstrap_token(&self, token: &SecretString) -> Result<bool, StartError> {
        // No expiry: it is the root of trust until the operator replaces it with named,
        // expiring tokens (`mayfly operator token create`, then revoke `bootstrap`).
        let record = OperatorTokenRecord::new(
            "bootstrap",
            hash_operator_token(token.expose()),
            mayfly_core::now(),
            None,
            "system:first-start",
        );
        match self.state.store.add_operator_token(&record).await {
            Ok(()) => Ok(true),
            Err(mayfly_core::store::StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Binds an address. Bind before [`Server::prepare`] and put the bound address in the
    /// config, so a port chosen by the OS (`:0`) is the one the default issuer names.
    pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })
    }

    /// Serves until `shutdown` resolves, running the schedulers alongside.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let expiry = tokio::spawn(scheduler::run_expiry(self.state.clone()));
        let refresh = tokio::spawn(scheduler::run_key_refresh(
            self.state.clone(),
            Duration::from_secs(5),
        ));
        // Leases left `creating` by a crash of this broker: listed before the first request
        // is served (with an embedded store no other process can be mid-issue, so none need
        // the grace time, and none of the list can be an issuance of this run), closed in
        // the background, so a target that is slow or down cannot hold up the start.
        let interrupted = scheduler::interrupted_issuances(&self.state, self.exclusive_store).await;
        let closing = tokio::spawn({
            let state = self.state.clone();
            async move { scheduler::close_interrupted(&state, interrupted).await }
        });
        let revoker = tokio::spawn(scheduler::run_revoker(self.state.clone()));
        let sweeper = tokio::spawn(scheduler::run_sweeper(
            self.state.clone(),
            self.reconcile_every,
        ));
        let failures = tokio::spawn(scheduler::run_auth_failure_audit(self.state.clone()));
        let webhooks = self.webhooks.spawn(&self.state);
        let policy = tokio::spawn(scheduler::run_policy_reload(
            self.state.clone(),
            Duration::from_secs(self.policy_reload.as_secs().max(1)),
        ));
        let checkpoints = tokio::spawn(checkpoint::run(
            self.state.checkpoints.clone(),
            self.checkpoint_every,
        ));
        let result = conn::serve(
            listener,
            self.tls.clone(),
            &self.http,
            app(self.state.clone()),
            self.state.metrics.clone(),
            shutdown,
        )
        .await;
        expiry.abort();
        refresh.abort();
        policy.abort();
        revoker.abort();
        sweeper.abort();
        closing.abort();
        failures.abort();
        checkpoints.abort();
        for worker in &webhooks {
            worker.abort();
        }
        // Undelivered events stay after the cursor; releasing the claims lets the next
        // start (or another replica) send them at once.
        self.webhooks.release(&self.state).await;
        scheduler::flush_auth_failures(&self.state, true).await;
        result
    }
}
