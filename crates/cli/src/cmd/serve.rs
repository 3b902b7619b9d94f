//! `mayfly serve`: configuration layering (defaults < mayfly.toml < MAYFLY_* < flags) of
//! the one [`Config`] struct, logging, first-start notes, and graceful shutdown.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches};
use mayfly_core::secret::SecretString;
use mayfly_server::{Config, LogFormat, Server};

/// The configuration `serve`'s arguments describe: the file (`--config` / `MAYFLY_CONFIG`)
/// over the defaults, then every option the environment or the command line set. `matches`
/// are `serve`'s own, parsed against [`Config`]'s arguments.
pub fn load_config(matches: &ArgMatches) -> anyhow::Result<Config> {
    let given = Config::from_arg_matches(matches)?;
    let mut config = match &given.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            let mut file =
                parse_file(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
            anchor_paths(&mut file, path.parent().unwrap_or(std::path::Path::new("")));
            file
        }
        None => Config::default(),
    };
    // clap fills every option it was not given with its default; those must not hide the
    // file's values, so only what the environment or the command line set is laid on top.
    let mut explicit = matches.clone();
    let defaulted: Vec<String> = matches
        .ids()
        .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::DefaultValue))
        .map(|id| id.as_str().to_owned())
        .collect();
    for id in defaulted {
        explicit.try_clear_id(&id)?;
    }
    config.update_from_arg_matches(&explicit)?;
    Ok(config)
}

/// One rule for where state lives: a relative path *in the file* is relative to the
/// file's directory, so `mayfly serve --config /etc/mayfly/mayfly.toml` finds the same data
/// whatever directory it is started from. (Relative paths given as flags or variables are
/// relative to the working directory, as for any command.)
fn anchor_paths(config: &mut Config, file_dir: &std::path::Path) {
    let anchor = |p: &mut std::path::PathBuf| {
        if p.is_relative() && !p.as_os_str().is_empty() {
            *p = file_dir.join(&*p);
        }
    };
    anchor(&mut config.data_dir);
    if let Some(p) = &mut config.master_key_file {
        anchor(p);
    }
    if let Some(p) = &mut config.policy.dir {
        anchor(p);
    }
}

/// A `mayfly.toml`; an unknown key is an error, not a silently ignored typo.
fn parse_file(text: &str) -> Result<Config, String> {
    toml::from_str::<Config>(text).map_err(|e| e.message().to_owned())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAYFLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs the broker until Ctrl-C or SIGTERM. With `--log-format json` every line on stderr
/// is a JSON object, a failure to start included (reported here, so the exit code is all
/// that reaches the caller).
pub async fn run(matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    let config = load_config(matches)?;
    let format = config.log_format;
    init_logging(format);
    let notes = Notes(format);
    match start(config, &notes).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if format == LogFormat::Json => {
            let mut error = e.to_string();
            for cause in e.chain().skip(1) {
                error.push_str(": ");
                error.push_str(&cause.to_string());
            }
            tracing::error!(%error, "mayfly did not start");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e),
    }
}

async fn start(mut config: Config, notes: &Notes) -> anyhow::Result<()> {
    let listener = Server::bind(config.listen).await?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    config.listen = addr;
    let master_key = std::env::var("MAYFLY_MASTER_KEY")
        .ok()
        .map(SecretString::new);
    // Absolute, so the line below says exactly where the state is.
    if let Ok(absolute) = std::path::absolute(&config.data_dir) {
        config.data_dir = absolute;
    }
    let (server, bootstrap) = Server::prepare(config.clone(), master_key).await?;
    notes.data_dir(&config.data_dir);
    if let Some(path) = &bootstrap.master_key_created {
        notes.master_key_created(path);
    }
    if let Some(token) = &bootstrap.operator_token {
        notes.show_first_token(token, &config.data_dir)?;
        // Recorded only now that it has been shown: a start that dies before this line
        // stored nothing, and the next start shows a new one.
        if !server.record_bootstrap_token(token).await? {
            notes.lost_bootstrap_race();
        }
    }
    notes.listening(server.scheme(), addr);
    server.serve(listener, shutdown_signal()).await?;
    tracing::info!("mayfly stopped");
    Ok(())
}

/// The start-up notes for the person who started the broker: plain `mayfly: …` lines in
/// the text format, log events in the JSON format (so a collector sees only JSON). The
/// first operator token never enters the log stream: see [`Notes::show_first_token`].
struct Notes(LogFormat);

impl Notes {
    fn json(&self) -> bool {
        self.0 == LogFormat::Json
    }

    fn data_dir(&self, dir: &Path) {
        if self.json() {
            tracing::info!(data_dir = %dir.display(), "data directory");
        } else {
            eprintln!("mayfly: data dir {}", dir.display());
        }
    }

    fn master_key_created(&self, path: &Path) {
        if self.json() {
            tracing::warn!(
                path = %path.display(),
                "generated a master key: back it up, every stored secret is encrypted under it; keep it apart from the database (or set MAYFLY_MASTER_KEY)"
            );
        } else {
            eprintln!(
                "mayfly: generated a master key at {}\nmayfly: BACK IT UP. Every stored secret (signing keys, target credentials) is encrypted under it;\nmayfly: without it they cannot be recovered. Keep it apart from the database (or set MAYFLY_MASTER_KEY).",
                path.display()
            );
        }
    }

    /// Shows the first operator token once. Text format: on stderr, as every note. JSON
    /// format: on the controlling terminal when there is one, else in a file only the
    /// broker's user can read (`<data-dir>/first-operator-token`, as Jenkins does with its
    /// first admin password); the log says where, never what.
    fn show_first_token(&self, token: &SecretString, data_dir: &Path) -> anyhow::Result<()> {
        let text = format!(
            "mayfly: first start: created an operator token. It is shown only this once and stored only as a hash:\n\n    export MAYFLY_TOKEN={}\n",
            token.expose()
        );
        if !self.json() {
            eprintln!("{text}");
            return Ok(());
        }
        if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
            if tty.write_all(format!("{text}\n").as_bytes()).is_ok() {
                tracing::warn!("first start: created an operator token, shown on the terminal");
                return Ok(());
            }
        }
        let path = data_dir.join(FIRST_TOKEN_FILE);
        write_private(&path, format!("{}\n", token.expose()).as_bytes()).with_context(|| {
            format!(
                "cannot write the first operator token to {}",
                path.display()
            )
        })?;
        tracing::warn!(
            path = %path.display(),
            "first start: created an operator token; no terminal to show it on, so it is in this file (mode 0600): read it, then delete the file"
        );
        Ok(())
    }

    fn lost_bootstrap_race(&self) {
        let text = "another replica recorded the first operator token at the same moment; the token shown is not valid, use the one it printed";
        if self.json() {
            tracing::warn!("{text}");
        } else {
            eprintln!("mayfly: {text}");
        }
    }

    fn listening(&self, scheme: &str, addr: std::net::SocketAddr) {
        if self.json() {
            tracing::info!(%addr, url = %format!("{scheme}://{addr}"), "listening");
        } else {
            eprintln!("mayfly: listening on {scheme}://{addr}");
            tracing::info!(%addr, "mayfly serving");
        }
    }
}

/// Where the JSON format leaves the first operator token when there is no terminal.
pub const FIRST_TOKEN_FILE: &str = "first-operator-token";

/// Creates `path` readable by its owner only (refusing to reuse an existing file, which
/// someone else may be able to read).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::net::SocketAddr;

    use clap::{Args, Command};
    use mayfly_core::duration::Ttl;
    use mayfly_server::Durability;

    use super::*;

    /// The variables the precedence test sets, cleared first so the caller's environment
    /// cannot decide the outcome.
    const VARS: &[&str] = &[
        "MAYFLY_CONFIG",
        "MAYFLY_LISTEN",
        "MAYFLY_DATA_DIR",
        "MAYFLY_STORE",
        "MAYFLY_DURABILITY",
        "MAYFLY_ISSUER",
        "MAYFLY_MASTER_KEY_FILE",
        "MAYFLY_TOKEN_MAX_TTL",
        "MAYFLY_PROVIDER_TIMEOUT",
        "MAYFLY_RECONCILE_INTERVAL",
        "MAYFLY_LOG_FORMAT",
        "MAYFLY_HTTP_HEADER_TIMEOUT",
        "MAYFLY_HTTP_BODY_TIMEOUT",
        "MAYFLY_HTTP_IDLE_TIMEOUT",
        "MAYFLY_HTTP_HANDSHAKE_TIMEOUT",
        "MAYFLY_HTTP_MAX_CONNECTIONS",
    ];

    fn load(args: &[&str]) -> Config {
        let command = Config::augment_args(Command::new("serve"));
        let matches = command
            .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap();
        load_config(&matches).unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    // The only test here that reads or sets MAYFLY_* variables: the environment is the
    // process's, shared by every test thread.
    #[test]
    fn flags_win_over_environment_over_file_over_defaults() {
        for var in VARS {
            std::env::remove_var(var);
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mayfly.toml");
        std::fs::write(
            &file,
            r#"
listen = "127.0.0.1:1001"
durability = "crash-safe"
provider_timeout = "5s"
reconcile_interval = "20m"
token_max_ttl = "2h"
log_format = "json"

[http]
header_timeout = "3s"
body_timeout = "7s"

[policy]
utc_offset = "+01:00"

[audit]
checkpoint_interval = "90s"
"#,
        )
        .unwrap();
        let path = file.to_str().unwrap();

        // Nothing given: the defaults, which are also what `--help` shows.
        let config = load(&[]);
        let defaults = Config::default();
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.data_dir, defaults.data_dir);
        assert_eq!(config.durability, Durability::Fsync);
        assert_eq!(config.provider_timeout, Ttl::from_secs(30));
        assert_eq!(config.http.header_timeout, Ttl::from_secs(10));
        assert_eq!(config.audit.checkpoint_interval, Ttl::from_secs(5 * 60));

        // The file over the defaults; what it leaves out stays default.
        let config = load(&["--config", path]);
        assert_eq!(config.listen, addr("127.0.0.1:1001"));
        assert_eq!(config.durability, Durability::CrashSafe);
        assert_eq!(config.provider_timeout, Ttl::from_secs(5));
        assert_eq!(config.reconcile_interval, Ttl::from_secs(20 * 60));
        assert_eq!(config.token_max_ttl, Ttl::from_secs(2 * 3600));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.http.header_timeout, Ttl::from_secs(3));
        assert_eq!(config.http.body_timeout, Ttl::from_secs(7));
        assert_eq!(config.http.idle_timeout, Ttl::from_secs(60));
        assert_eq!(config.policy.utc_offset, "+01:00");
        assert_eq!(config.audit.checkpoint_interval, Ttl::from_secs(90));
        assert_eq!(config.data_dir, defaults.data_dir);

        // The environment over the file (the file itself named by MAYFLY_CONFIG).
        std::env::set_var("MAYFLY_CONFIG", path);
        std::env::set_var("MAYFLY_LISTEN", "127.0.0.1:1002");
        std::env::set_var("MAYFLY_HTTP_HEADER_TIMEOUT", "4s");
        std::env::set_var("MAYFLY_PROVIDER_TIMEOUT", "6s");
        let config = load(&[]);
        assert_eq!(config.listen, addr("127.0.0.1:1002"));
        assert_eq!(config.http.header_timeout, Ttl::from_secs(4));
        assert_eq!(config.provider_timeout, Ttl::from_secs(6));
        assert_eq!(config.http.body_timeout, Ttl::from_secs(7));
        assert_eq!(config.durability, Durability::CrashSafe);

        // Flags over both, even a flag that names the default value.
        let config = load(&[
            "--listen",
            "127.0.0.1:1003",
            "--provider-timeout",
            "7s",
            "--durability",
            "fsync",
            "--http-body-timeout",
            "8s",
        ]);
        assert_eq!(config.listen, addr("127.0.0.1:1003"));
        assert_eq!(config.provider_timeout, Ttl::from_secs(7));
        assert_eq!(config.durability, Durability::Fsync);
        assert_eq!(config.http.body_timeout, Ttl::from_secs(8));
        assert_eq!(config.http.header_timeout, Ttl::from_secs(4));
        assert_eq!(config.reconcile_interval, Ttl::from_secs(20 * 60));

        for var in VARS {
            std::env::remove_var(var);
        }
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error() {
        for (text, key) in [
            ("listn = \"127.0.0.1:1\"", "listn"),
            ("[http]\nheader_timout = \"1s\"", "header_timout"),
            ("[auth.failures]\nbrust = 3", "brust"),
            ("[policy]\ndirectory = \"p\"", "directory"),
            (
                "[audit]\ncheckpoint_intervall = \"1m\"",
                "checkpoint_intervall",
            ),
            // `--config` is not a file key: a file naming another file is a loop.
            ("config = \"other.toml\"", "config"),
        ] {
            let error = parse_file(text).expect_err(text);
            assert!(
                error.contains("unknown field") && error.contains(key),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn the_file_takes_typed_values_only() {
        let error = parse_file("durability = \"sometimes\"").unwrap_err();
        assert!(
            error.contains("fsync") && error.contains("crash-safe"),
            "{error}"
        );
        assert!(parse_file("provider_timeout = \"soon\"").is_err());
        assert_eq!(
            parse_file("durability = \"crash-safe\"")
                .unwrap()
                .durability,
            Durability::CrashSafe
        );
    }
}
