//! Copies the write-ahead log back into the database file off the writer's path.
//!
//! By default SQLite checkpoints inside the `COMMIT` that pushes the WAL past 1,000 pages:
//! that commit then copies pages and, in both durability modes, fsyncs the database
//! file before it returns, so every group of grants queued behind it waits several
//! milliseconds. Profiles of the grant path put about a fifth of the writer's time there.
//!
//! Here a task with its own connection runs `PASSIVE` checkpoints every
//! [`INTERVAL`]: they never block the writer or readers and copy whatever is committed.
//! The writer keeps an automatic checkpoint only as a backstop at [`WRITER_BACKSTOP_PAGES`]
//! (by then nearly everything is copied already, so it is cheap): a WAL is only reset
//! by a write that starts after a complete checkpoint, which a busy writer may otherwise
//! never see.

use std::time::Duration;

use sqlx::{Connection, SqliteConnection};

use crate::engine::WriterWatch;

/// How often the background checkpoint runs: at thousands of grants per second the WAL
/// grows by about a MiB in this time.
const INTERVAL: Duration = Duration::from_millis(100);

/// WAL pages after which the writer checkpoints itself (32 MiB at 4 KiB pages).
pub(crate) const WRITER_BACKSTOP_PAGES: &str = "8192";

/// Runs until the store's writer is gone (every strong sender dropped), then closes its
/// connection, which lets SQLite checkpoint one last time if it is the last one open.
pub(crate) async fn run(mut conn: SqliteConnection, writer: WriterWatch) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !writer.is_running() {
            break;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            // Not fatal: the writer's backstop keeps the WAL bounded meanwhile.
            tracing::warn!(error = %e, "background WAL checkpoint failed");
        }
    }
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing the checkpoint connection failed");
    }
}
