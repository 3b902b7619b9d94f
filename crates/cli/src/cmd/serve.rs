//! `mayfly serve`: configuration layering (defaults < mayfly.toml < MAYFLY_* < flags) of
//! the one [`Config`] struct, logging, first-start notes, and graceful shutdown.

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

pub async fn run(matches: &ArgMatches) -> anyhow::Result<()> {
    let mut config = load_config(matches)?;
    init_logging(config.log_format);
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
    eprintln!("mayfly: data dir {}", config.data_dir.display());

    if let Some(path) = &bootstrap.master_key_created {
        eprintln!(
            "mayfly: generated a master key at {}\nmayfly: BACK IT UP. Every stored secret (signing keys, target credentials) is encrypted under it;\nmayfly: without it they cannot be recovered. Keep it apart from the database (or set MAYFLY_MASTER_KEY).",
            path.display()
        );
    }
    if let Some(token) = &bootstrap.operator_token {
        eprintln!(
            "mayfly: first start: created an operator token. It is shown only this once and stored only as a hash:\n\n    export MAYFLY_TOKEN={}\n\nmayfly: it never expires: make named, expiring tokens (`mayfly operator token create --name NAME`), then revoke this one (`mayfly operator token revoke bootstrap`).",
            token.expose()
        );
        // Recorded only now that it has been shown: a start that dies before this line
        // stored nothing, and the next start shows a new one.
        if !server.record_bootstrap_token(token).await? {
            eprintln!("mayfly: another replica recorded the first operator token at the same moment; the token above is not valid, use the one it printed");
        }
    }
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
