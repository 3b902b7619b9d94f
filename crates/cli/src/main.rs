//! `mayfly`: runs the broker (`serve`) and drives it over its HTTP API (everything else).
//! Only `serve` and offline maintenance (`audit verify --store`, `store migrate`,
//! `store recover-operator`) open the store directly.
//!
//! This file is the command tree's top level, the dispatch to one module per command group
//! (`cmd/`), and the one place errors are printed.

mod client;
mod cmd;
mod output;

use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use cmd::audit::AuditCmd;
use cmd::grant::{GrantsArgs, RequestArgs};
use cmd::identity::IdentityCmd;
use cmd::introspect::IntrospectArgs;
use cmd::keys::KeysCmd;
use cmd::lease::{LeasesArgs, RenewArgs};
use cmd::operator::OperatorCmd;
use cmd::policy::PolicyCmd;
use cmd::revoke::RevokeArgs;
use cmd::store::StoreCmd;
use cmd::target::TargetCmd;
use cmd::Group;

/// The broker keeps no large state in memory, but bursts (a 100,000-lease kill switch, a
/// run of bulk grants) allocate hundreds of MiB for moments; glibc's per-thread arenas
/// kept them resident afterwards. mimalloc returns freed pages to the OS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mayfly",
    version,
    about = "Just-in-time access broker for non-human identities"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (zero config: SQLite in the user data dir, 127.0.0.1:8740).
    Serve(Box<mayfly_server::Config>),
    /// Manage non-human identities.
    Identity(Group<IdentityCmd>),
    /// Manage targets (things access is granted to).
    Target(Group<TargetCmd>),
    /// Request access: policy decides now; a credential is issued for the TTL.
    Request(RequestArgs),
    /// List grants.
    Grants(GrantsArgs),
    /// List leases (issued credentials).
    Leases(LeasesArgs),
    /// Extend a lease (never beyond its cap).
    Renew(RenewArgs),
    /// Revoke a grant, or everything of a task, identity or owner.
    Revoke(RevokeArgs),
    /// The audit chain.
    Audit(Group<AuditCmd>),
    /// Signing keys.
    Keys(Group<KeysCmd>),
    /// Offline store maintenance (opens the stores directly; stop the broker first).
    #[command(subcommand)]
    Store(StoreCmd),
    /// Cedar policies: validate and test offline, explain a decision on the live broker.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Ask the broker whether a token it issued is still active (RFC 7662).
    Introspect(IntrospectArgs),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Operator tokens: create (shown once), list, revoke.
    Operator(Group<OperatorCmd>),
}

fn main() -> ExitCode {
    // Kept beside the parsed command: `serve` layers its configuration by where each value
    // came from (default, environment or flag), which only the matches record.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &matches)) {
        Ok(code) => code,
        Err(e) => {
            // One plain line: the chain of causes joined.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                line.push_str(": ");
                line.push_str(&cause.to_string());
            }
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the parsed command; the exit code is non-zero where a command says so (a broken
/// audit chain, a failing policy test).
async fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    let done = |()| ExitCode::SUCCESS;
    match cli.command {
        Command::Serve(_) => {
            let args = matches
                .subcommand_matches("serve")
                .context("serve was parsed without its arguments")?;
            cmd::serve::run(args).await.map(done)
        }
        Command::Identity(group) => cmd::identity::run(group).await.map(done),
        Command::Target(group) => cmd::target::run(group).await.map(done),
        Command::Request(args) => cmd::grant::request(args).await.map(done),
        Command::Grants(args) => cmd::grant::list(args).await.map(done),
        Command::Leases(args) => cmd::lease::list(args).await.map(done),
        Command::Renew(args) => cmd::lease::renew(args).await.map(done),
        Command::Revoke(args) => cmd::revoke::run(args).await.map(done),
        Command::Audit(group) => cmd::audit::run(group).await,
        Command::Keys(group) => cmd::keys::run(group).await.map(done),
        Command::Store(store) => cmd::store::run(store).await,
        Command::Policy(policy) => cmd::policy::run(policy).await,
        Command::Introspect(args) => cmd::introspect::run(args).await.map(done),
        Command::Completions { shell } => {
            cmd::completions::run(shell, Cli::command());
            Ok(ExitCode::SUCCESS)
        }
        Command::Operator(group) => cmd::operator::run(group).await.map(done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap checks a command tree (duplicate names, flags shadowing a subcommand's) only
    /// where it is used; this checks every command at once.
    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
