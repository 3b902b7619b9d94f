//! `mayfly`: runs the broker (`serve`) and drives it over its HTTP API (everything else).
//! Only `serve` and offline maintenance (`audit verify --store`, `store migrate`,
//! `store recover-operator`) open the store directly.
//!
//! This file is the command tree's top level, the dispatch to one module per command group
//! (`cmd/`), and the one place errors are printed.

mod client;
mod cmd;
mod failure;
mod output;

use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use cmd::approval::{AnswerArgs, ApprovalsArgs, ReviewsArgs};
use cmd::audit::AuditCmd;
use cmd::exec::ExecArgs;
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
use cmd::task::TasksArgs;
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
    about = "Just-in-time access broker for non-human identities",
    after_help = failure::EXIT_CODES
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
    /// List grants, or show one (`grants show ID`).
    Grants(GrantsArgs),
    /// List leases (issued credentials), or show one (`leases show ID`).
    Leases(LeasesArgs),
    /// Extend a lease (never beyond its cap).
    Renew(RenewArgs),
    /// List task records, or open, show, complete or fail one (`tasks show ID`; `task` works
    /// too). Ending a task revokes every lease in it.
    #[command(visible_alias = "task")]
    Tasks(TasksArgs),
    /// Run one command as one task: credentials for each --target in its environment only,
    /// renewed while it runs, revoked when it ends (`mayfly exec --target db --purpose …
    /// -- psql`).
    Exec(Box<ExecArgs>),
    /// Approval requests you may answer (people with an approver ID token, or operators).
    Approvals(ApprovalsArgs),
    /// Approve a request waiting for approval, with a comment.
    Approve(AnswerArgs),
    /// Deny a request waiting for approval, with a comment.
    Deny(AnswerArgs),
    /// Break-glass uses waiting for review, or close one (`reviews close ID --comment …`).
    Reviews(ReviewsArgs),
    /// Revoke a grant or lease, or everything of a task, identity, owner, target or prefix.
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
    /// Print a static shell completion script. For completions that also know the broker's
    /// target and identity names, use `source <(COMPLETE=bash mayfly)` (zsh, fish,
    /// elvish, powershell likewise) instead.
    Completions {
        /// The shell to write the script for.
        shell: clap_complete::Shell,
    },
    /// Operator tokens: create (shown once), list, revoke.
    Operator(Group<OperatorCmd>),
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    // Dynamic completion (`source <(COMPLETE=bash mayfly)`): when the shell calls back with
    // COMPLETE set, this answers with candidates and exits; otherwise it returns at once.
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .bin("mayfly")
        .complete();
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
            eprintln!("error: {}", failure::one_line(&e));
            ExitCode::from(failure::exit_code(&e))
        }
    }
}

/// `mayfly leases | head` closes stdout before everything is printed, and `println!` then
/// panics. A reader that has seen enough is no error: exit as a Unix tool killed by
/// SIGPIPE does (128 + 13), without a backtrace.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
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
            cmd::serve::run(args).await
        }
        Command::Identity(group) => cmd::identity::run(group).await.map(done),
        Command::Target(group) => cmd::target::run(group).await.map(done),
        Command::Request(args) => cmd::grant::request(args).await.map(done),
        Command::Grants(args) => cmd::grant::grants(args).await.map(done),
        Command::Leases(args) => cmd::lease::leases(args).await.map(done),
        Command::Renew(args) => cmd::lease::renew(args).await.map(done),
        Command::Tasks(args) => cmd::task::run(args).await.map(done),
        Command::Exec(args) => cmd::exec::run(*args).await,
        Command::Approvals(args) => cmd::approval::list(args).await.map(done),
        Command::Approve(args) => cmd::approval::answer(args, true).await.map(done),
        Command::Deny(args) => cmd::approval::answer(args, false).await.map(done),
        Command::Reviews(args) => cmd::approval::reviews(args).await.map(done),
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
#[allow(clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// clap checks a command tree (duplicate names, flags shadowing a subcommand's) only
    /// where it is used; this checks every command at once.
    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The whole tree, built as `mayfly` parses it (global options propagated).
    fn built() -> clap::Command {
        let mut cmd = Cli::command();
        cmd.build();
        cmd
    }

    /// `(path, command)` for every command under `cmd`, `cmd` included.
    fn every_command(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands() {
            // clap's own `help` subcommand documents the others.
            if sub.get_name() != "help" {
                every_command(sub, format!("{path} {}", sub.get_name()), out);
            }
        }
        out.push((path, cmd.clone()));
    }

    /// `--help` is the reference a newcomer reads: every option and positional of every
    /// command says what it is for.
    #[test]
    fn every_argument_has_help() {
        let mut commands = Vec::new();
        every_command(&built(), "mayfly".into(), &mut commands);
        let mut missing = Vec::new();
        for (path, cmd) in &commands {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
            }
        }
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
        assert!(
            commands.len() > 30,
            "the walk missed commands: {}",
            commands.len()
        );
    }

    /// `--addr` and `--token` say where a broker is and who asks it: commands that talk to
    /// none (the server itself, offline policy checks) do not offer them.
    #[test]
    fn client_options_are_only_on_client_commands() {
        let mut commands = Vec::new();
        every_command(&built(), "mayfly".into(), &mut commands);
        let has = |path: &str, id: &str| {
            let (_, cmd) = commands
                .iter()
                .find(|(p, _)| p == path)
                .unwrap_or_else(|| panic!("no command {path}"));
            cmd.get_arguments().any(|a| a.get_id().as_str() == id)
        };
        for path in [
            "mayfly serve",
            "mayfly policy validate",
            "mayfly policy test",
        ] {
            for id in ["addr", "token"] {
                assert!(!has(path, id), "{path} offers --{id}");
            }
        }
        // Offline commands that print listings keep `--output` (JSON lines for scripts).
        assert!(!has("mayfly serve", "output"));
        for path in [
            "mayfly leases",
            "mayfly leases show",
            "mayfly grants show",
            "mayfly keys list",
            "mayfly revoke",
            "mayfly policy explain",
        ] {
            for id in ["addr", "token", "output"] {
                assert!(has(path, id), "{path} lacks --{id}");
            }
        }
    }

    /// `target add --help` names the credential kinds a target can have.
    #[test]
    fn target_add_lists_the_credential_kinds() {
        let mut commands = Vec::new();
        every_command(&built(), "mayfly".into(), &mut commands);
        let (_, add) = commands
            .iter()
            .find(|(p, _)| p == "mayfly target add")
            .expect("target add");
        let kind = add
            .get_arguments()
            .find(|a| a.get_id().as_str() == "kind")
            .expect("--kind");
        let values: Vec<String> = kind
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_string())
            .collect();
        for expected in ["token", "postgres", "mariadb"] {
            assert!(values.iter().any(|v| v == expected), "{values:?}");
        }
    }
}
