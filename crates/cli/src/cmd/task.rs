//! `mayfly tasks`: task records (list, open, show one, complete or fail one).

use clap::Subcommand;
use mayfly_core::duration::Ttl;
use mayfly_core::model::{Task, TaskState};
use mayfly_server::api::tasks::CreateTaskRequest;
use serde_json::Value;

use super::{query, uuid, ApiEnum, ClientArgs};
use crate::client::Answer;
use crate::output::{self, Column};

// `mayfly tasks`; its help is the doc comment on `Command::Tasks`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TasksArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    cmd: Option<TasksCmd>,
    /// Only this identity's tasks (operators; a workload sees its own).
    #[arg(long, add = super::completions::identities())]
    identity: Option<String>,
    /// Only tasks in this state.
    #[arg(long, value_parser = ApiEnum::<TaskState>::new())]
    state: Option<TaskState>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Subcommand)]
pub enum TasksCmd {
    /// Open a task for the calling workload; prints it (its `id` is the `--task` of grants,
    /// its `task_token` their `Txn-Token` header).
    Open {
        /// The identity the task is for (operators; a workload opens its own).
        #[arg(long, add = super::completions::identities())]
        identity: Option<String>,
        /// Why the task runs; audited.
        #[arg(long)]
        purpose: String,
        /// How long from now it may run (at most 24h); then every lease in it is revoked.
        #[arg(long)]
        deadline: Ttl,
        /// The open task this one is a step of; it ends with it.
        #[arg(long)]
        parent: Option<String>,
    },
    /// One task with its leases, by id.
    Show {
        /// The task's id (`mayfly tasks` lists them).
        id: String,
    },
    /// End the task as done: every lease in it (and in its child tasks) is revoked.
    Complete {
        /// The task's id.
        id: String,
    },
    /// End the task as failed: every lease in it (and in its child tasks) is revoked.
    Fail {
        /// The task's id.
        id: String,
    },
}

const COLUMNS: &[Column<Task>] = &[
    ("ID", |t| output::field(&t.id)),
    ("IDENTITY", |t| t.identity.clone()),
    ("STATE", |t| output::field(&t.state)),
    ("DEADLINE", |t| output::time(t.deadline)),
    ("PARENT", |t| output::field(&t.parent)),
    ("PURPOSE", |t| t.purpose.clone()),
];

pub async fn run(args: TasksArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    let shown: Value = match args.cmd {
        None => {
            let q = query(&[
                ("identity", args.identity),
                ("state", args.state.map(|s| s.as_str().to_string())),
                ("limit", Some(args.limit.to_string())),
            ]);
            let items: Vec<Answer<Task>> = client.get("/v1/tasks", &q).await?;
            output::list(out, &items, COLUMNS);
            return Ok(());
        }
        Some(TasksCmd::Open {
            identity,
            purpose,
            deadline,
            parent,
        }) => {
            let parent = parent.map(|p| uuid("task", &p)).transpose()?;
            let body = CreateTaskRequest {
                identity,
                purpose,
                deadline,
                parent,
            };
            client.post("/v1/tasks", &body).await?
        }
        Some(TasksCmd::Show { id }) => {
            let id = uuid("task", &id)?;
            client.get(&format!("/v1/tasks/{id}"), &[]).await?
        }
        Some(TasksCmd::Complete { id }) => {
            let id = uuid("task", &id)?;
            client
                .post_empty(&format!("/v1/tasks/{id}/complete"))
                .await?
        }
        Some(TasksCmd::Fail { id }) => {
            let id = uuid("task", &id)?;
            client.post_empty(&format!("/v1/tasks/{id}/fail")).await?
        }
    };
    output::object(out, &shown);
    Ok(())
}
