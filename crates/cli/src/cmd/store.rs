//! `mayfly store`: offline store maintenance; opens the stores directly (stop the broker
//! first).

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::Output;
use crate::output::Format;

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Copy every record, and the audit chain entry for entry, into an empty store, then
    /// verify the chain there (e.g. embedded SQLite to PostgreSQL for several replicas).
    Migrate {
        /// Source store URL, e.g. sqlite:///var/lib/mayfly/mayfly.db
        #[arg(long)]
        from: String,
        /// Target store URL (must be empty), e.g. postgres://mayfly@db/mayfly
        #[arg(long)]
        to: String,
        #[command(flatten)]
        output: Output,
    },
    /// Mint an operator token for a broker whose tokens are all lost, expired or revoked,
    /// by opening its store directly. Needs the deployment's master key (the file, or
    /// MAYFLY_MASTER_KEY): holding it is what proves you operate this broker. The token is
    /// printed once and recorded in the audit chain as `operator.recovered`. Stop the
    /// broker first when its store is SQLite; a PostgreSQL store may stay in use.
    RecoverOperator {
        /// Name of the new token (must not be held by a live token).
        #[arg(long)]
        name: String,
        /// Data directory of the broker (where its SQLite store and master key are).
        #[arg(long, env = "MAYFLY_DATA_DIR", default_value_os_t = mayfly_server::Config::default().data_dir)]
        data_dir: std::path::PathBuf,
        /// Store URL or SQLite path [default: sqlite://<data-dir>/mayfly.db].
        #[arg(long, env = "MAYFLY_STORE")]
        store: Option<String>,
        /// Master key file [default: <data-dir>/master.key]. MAYFLY_MASTER_KEY (the key
        /// itself) wins.
        #[arg(long, env = "MAYFLY_MASTER_KEY_FILE")]
        master_key_file: Option<std::path::PathBuf>,
        /// Lifetime of the recovered token: short, because it is for getting back in and
        /// making proper ones (`mayfly operator token create`).
        #[arg(long, default_value = "24h")]
        expires_in: mayfly_core::duration::Ttl,
    },
}

pub async fn run(cmd: StoreCmd) -> anyhow::Result<ExitCode> {
    let (from, to, output) = match cmd {
        StoreCmd::Migrate { from, to, output } => (from, to, output),
        StoreCmd::RecoverOperator {
            name,
            data_dir,
            store,
            master_key_file,
            expires_in,
        } => {
            recover_operator(name, data_dir, store, master_key_file, expires_in).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let out = output.output;
    eprintln!(
        "mayfly: copying {} into {} …",
        redact_url(&from),
        redact_url(&to)
    );
    let report = mayfly_store::copy_store(&from, &to)
        .await
        .context("migration failed")?;
    let intact = report
        .verified
        .as_ref()
        .is_some_and(|v| v.first_break.is_none());
    match out {
        Format::Json => println!("{}", serde_json::to_value(&report)?),
        Format::Table => {
            println!(
                "copied {} identities, {} targets, {} grants, {} leases, {} signing keys, {} audit entries",
                report.identities, report.targets, report.grants, report.leases, report.signing_keys, report.audit_entries
            );
            println!(
                "audit chain on the target: {}",
                if intact { "intact" } else { "BROKEN" }
            );
        }
    }
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::failure::CHECK_FAILED)
    })
}

/// A store URL for messages: the password, if any, replaced.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:[redacted]{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

async fn recover_operator(
    name: String,
    data_dir: std::path::PathBuf,
    store: Option<String>,
    master_key_file: Option<std::path::PathBuf>,
    expires_in: mayfly_core::duration::Ttl,
) -> anyhow::Result<()> {
    use mayfly_core::audit::{AuditDraft, AuditKind};
    use mayfly_core::store::{OperatorTokenRecord, StoreError};

    mayfly_core::validate::name("--name", &name)?;
    if expires_in.as_secs() == 0 {
        anyhow::bail!("--expires-in must be greater than zero");
    }
    let key_path = master_key_file.unwrap_or_else(|| data_dir.join("master.key"));
    let from_env = std::env::var("MAYFLY_MASTER_KEY")
        .ok()
        .map(mayfly_core::secret::SecretString::new);
    let master = mayfly_server::existing_master_key(&key_path, from_env)
        .context("cannot recover without the master key")?;
    let url = store.unwrap_or_else(|| format!("sqlite://{}", data_dir.join("mayfly.db").display()));
    // Never create a store here: recovering one that does not exist is a wrong path.
    if mayfly_store::backend_of(&url)? == mayfly_store::Backend::Sqlite {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(&url);
        if !std::path::Path::new(path).exists() {
            anyhow::bail!(
                "no store at {path}: pass --store or --data-dir of the broker to recover"
            );
        }
    }
    let store = mayfly_store::open(&url, mayfly_store::Durability::Fsync)
        .await
        .with_context(|| format!("cannot open store {}", redact_url(&url)))?;
    // The key must be this deployment's: it has to open the signing keys the broker made.
    for key in store
        .list_signing_keys()
        .await
        .context("cannot read the signing keys")?
    {
        if master
            .open(&key.private_sealed, &format!("signing-key:{}", key.kid))
            .is_err()
        {
            anyhow::bail!(
                "the master key at {} does not open this store's signing keys; it is not this deployment's key",
                key_path.display()
            );
        }
    }
    let (token, hash) = mayfly_identity::operator::generate_operator_token()?;
    let now = mayfly_core::now();
    let expires_at = now + expires_in.as_time();
    let record = OperatorTokenRecord::new(&name, hash, now, Some(expires_at), "system:recovery");
    let os_user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok();
    let event = AuditDraft::new(AuditKind::OperatorRecovered, "system:recovery").detail(
        serde_json::json!({
            "name": name,
            "expires_at": expires_at.format(&time::format_description::well_known::Rfc3339).ok(),
            "os_user": os_user,
        }),
    );
    match store.create_operator_token(&record, event).await {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => {
            anyhow::bail!("a live operator token is already named {name:?}; choose another --name")
        }
        Err(e) => return Err(e).context("cannot record the token"),
    }
    eprintln!(
        "mayfly: recovered: operator token {name:?}, expires {}. It is shown only this once:",
        expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    );
    println!("{}", token.expose());
    Ok(())
}
