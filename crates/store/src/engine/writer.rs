//! The writer task: group commit over any [`Backend`], and the handle stores submit to.

use std::time::Instant;

use mayfly_core::store::StoreError;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::chain::Chain;
use super::ops::{self, answer, Answer, GrantRecord, Op, Reply};
use super::{Backend, Changed};

/// Most operations committed together. Bounded so one commit's latency stays small and a
/// burst cannot hold the write lock (on PostgreSQL: the chain head every replica waits on)
/// for long.
const MAX_BATCH: usize = 256;

enum Msg {
    Job(Box<Op>),
    /// Finish what is queued before this, then stop.
    Shutdown(oneshot::Sender<()>),
}

/// Where the writer runs.
pub(crate) enum Placement {
    /// A task on the caller's runtime (PostgreSQL: its I/O is network round trips).
    Task,
    /// A thread of its own with a single-threaded runtime (SQLite). On the shared runtime
    /// every statement's reply from SQLite's thread waited in the run queue behind HTTP
    /// handlers before the writer could send the next one; here it wakes as soon as
    /// SQLite answers.
    Thread(&'static str),
}

/// Submits operations to a running writer. Cheap to share; the writer stops when
/// [`WriterHandle::shutdown`] is called or every handle is gone.
pub(crate) struct WriterHandle {
    tx: mpsc::Sender<Msg>,
    done: Mutex<Option<oneshot::Receiver<()>>>,
}

/// Starts the writer over `backend`; `queue` writes may wait before callers feel
/// back-pressure.
pub(crate) fn spawn<B: Backend>(
    backend: B,
    queue: usize,
    placement: Placement,
) -> Result<WriterHandle, StoreError> {
    let (tx, rx) = mpsc::channel(queue);
    let (done_tx, done) = oneshot::channel();
    let writer = Writer { backend };
    let run = async move {
        writer.run(rx).await;
        let _ = done_tx.send(());
    };
    match placement {
        Placement::Task => {
            tokio::spawn(run);
        }
        Placement::Thread(name) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("{name}-blocking"))
                .build()
                .map_err(|e| StoreError::Backend(format!("starting the writer runtime: {e}")))?;
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || runtime.block_on(run))
                .map_err(|e| StoreError::Backend(format!("starting the writer thread: {e}")))?;
        }
    }
    Ok(WriterHandle {
        tx,
        done: Mutex::new(Some(done)),
    })
}

impl WriterHandle {
    /// Runs the operation `make` builds around its reply channel and waits for its answer.
    pub(crate) async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Job(Box::new(make(reply))))
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?;
        answer.await.map_err(|_| {
            StoreError::Unavailable("the store's writer stopped before answering".into())
        })?
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// Whether the writer is still running, without keeping it alive (for background
    /// tasks that should end with it).
    pub(crate) fn watch(&self) -> WriterWatch {
        WriterWatch(self.tx.downgrade())
    }

    /// Finishes queued writes and stops the writer; waits until it has.
    pub(crate) async fn shutdown(&self) {
        let (ack, acked) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(ack)).await.is_ok() {
            let _ = acked.await;
        }
        if let Some(done) = self.done.lock().await.take() {
            if done.await.is_err() {
                tracing::error!("the store's writer ended abnormally");
            }
        }
    }
}

/// See [`WriterHandle::watch`].
pub(crate) struct WriterWatch(mpsc::WeakSender<Msg>);

impl WriterWatch {
    pub(crate) fn is_running(&self) -> bool {
        self.0.upgrade().is_some_and(|tx| !tx.is_closed())
    }
}

struct Writer<B> {
    backend: B,
}

impl<B: Backend> Writer<B> {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(first) = rx.recv().await {
            let mut jobs = Vec::new();
            let mut shutdown = None;
            match first {
                Msg::Job(op) => jobs.push(*op),
                Msg::Shutdown(ack) => shutdown = Some(ack),
            }
            // Everything that queued while the last commit was flushing joins this one.
            while shutdown.is_none() && jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Job(op)) => jobs.push(*op),
                    Ok(Msg::Shutdown(ack)) => shutdown = Some(ack),
                    Err(_) => break,
                }
            }
            if !jobs.is_empty() {
                self.run_batch(jobs).await;
            }
            if let Some(ack) = shutdown {
                let _ = ack.send(());
                return;
            }
        }
    }

    async fn run_batch(&mut self, jobs: Vec<Op>) {
        let started = Instant::now();
        let count = jobs.len();
        let changed: Vec<Changed> = jobs.iter().filter_map(Op::changes).collect();
        let head = match self.backend.begin().await {
            Ok(head) => head,
            Err(e) => {
                for op in jobs {
                    op.fail(e.clone());
                }
                return;
            }
        };
        let waited = started.elapsed();
        let batch_head = head.clone();
        let mut chain = Chain::new(head);

        let mut answers: Vec<Box<dyn Answer>> = Vec::with_capacity(count);
        let mut fatal: Option<StoreError> = None;
        let mut jobs = jobs.into_iter().peekable();
        while fatal.is_none() {
            let Some(op) = jobs.next() else {
                break;
            };
            let outcome = match op {
                Op::RecordGrant(first) => {
                    let mut run = vec![*first];
                    while let Some(next) = jobs.next_if(|op| matches!(op, Op::RecordGrant(_))) {
                        if let Op::RecordGrant(record) = next {
                            run.push(*record);
                        }
                    }
                    self.grant_run(&mut chain, run, &mut answers).await
                }
                op => self.single(&mut chain, op, &mut answers).await,
            };
            fatal = outcome.err();
        }

        if fatal.is_none() {
            fatal = chain.flush(&mut self.backend, &batch_head).await.err();
        }
        if fatal.is_none() {
            fatal = self.backend.commit().await.err();
        }
        if let Some(err) = fatal {
            tracing::error!(error = %err, ops = count, "write batch failed; rolled back");
            self.backend.rollback().await;
            for answer in answers {
                answer.fail(&err);
            }
            for op in jobs {
                op.fail(err.clone());
            }
            return;
        }
        // Before anyone hears back, so nobody who knows of the change is served a copy
        // from before it. A rolled-back batch changed nothing.
        self.backend.committed(&changed);
        tracing::trace!(
            ops = count,
            lock_wait_us = waited.as_micros() as u64,
            elapsed_us = started.elapsed().as_micros() as u64,
            "write batch committed"
        );
        for answer in answers {
            answer.commit();
        }
    }

    /// Runs one operation inside its own savepoint. `Err` means the batch must be
    /// abandoned (the operation's answer is already in `answers`).
    async fn single(
        &mut self,
        chain: &mut Chain,
        op: Op,
        answers: &mut Vec<Box<dyn Answer>>,
    ) -> Result<(), StoreError> {
        let mark = chain.mark();
        if let Err(e) = self.backend.savepoint().await {
            op.fail(e.clone());
            return Err(e);
        }
        let answer = ops::run(&mut self.backend, chain, op).await;
        let own = answer.error().cloned();
        answers.push(answer);
        match own {
            None => self.backend.release_savepoint().await,
            // The connection cannot be trusted: fail the batch (see the module docs).
            Some(e @ StoreError::Unavailable(_)) => Err(e),
            Some(_) => {
                chain.reset(mark);
                self.backend.rollback_to_savepoint().await?;
                self.backend.release_savepoint().await
            }
        }
    }

    /// Records consecutive grants with one insert per table; after a failure of the run
    /// as a whole (a key conflict), redoes it call by call so only the culprit fails.
    async fn grant_run(
        &mut self,
        chain: &mut Chain,
        run: Vec<GrantRecord>,
        answers: &mut Vec<Box<dyn Answer>>,
    ) -> Result<(), StoreError> {
        let whole = match self.try_grants(chain, &run).await {
            Ok(whole) => whole,
            Err(fatal) => return Err(answer_all(run, &fatal, answers)),
        };
        match whole {
            Ok(outcomes) => {
                for (record, outcome) in run.into_iter().zip(outcomes) {
                    answers.push(answer(record.reply, outcome));
                }
                Ok(())
            }
            Err(e) if run.len() == 1 => {
                answer_all(run, &e, answers);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, calls = run.len(), "grouped grant insert failed; retrying one by one");
                let mut records = run.into_iter();
                while let Some(record) = records.next() {
                    let outcome = match self.try_grants(chain, std::slice::from_ref(&record)).await
                    {
                        Ok(Ok(mut outcomes)) => outcomes.pop().unwrap_or(Ok(())),
                        Ok(Err(own)) => Err(own),
                        Err(fatal) => {
                            answers.push(answer(record.reply, Err(fatal.clone())));
                            return Err(answer_all(records.collect(), &fatal, answers));
                        }
                    };
                    answers.push(answer(record.reply, outcome));
                }
                Ok(())
            }
        }
    }

    /// One attempt at a run inside a savepoint. Outer `Err`: the batch must be abandoned;
    /// inner `Err`: the run failed as a whole and was rolled back.
    #[allow(clippy::type_complexity)]
    async fn try_grants(
        &mut self,
        chain: &mut Chain,
        run: &[GrantRecord],
    ) -> Result<Result<Vec<Result<(), StoreError>>, StoreError>, StoreError> {
        let mark = chain.mark();
        self.backend.savepoint().await?;
        match ops::record_grants(&mut self.backend, chain, run).await {
            Ok(outcomes) => {
                self.backend.release_savepoint().await?;
                Ok(Ok(outcomes))
            }
            Err(e @ StoreError::Unavailable(_)) => Err(e),
            Err(e) => {
                chain.reset(mark);
                self.backend.rollback_to_savepoint().await?;
                self.backend.release_savepoint().await?;
                Ok(Err(e))
            }
        }
    }
}

/// Answers every record of `run` with `err`; returns `err` for the caller to propagate.
fn answer_all(
    run: Vec<GrantRecord>,
    err: &StoreError,
    answers: &mut Vec<Box<dyn Answer>>,
) -> StoreError {
    for record in run {
        answers.push(answer(record.reply, Err(err.clone())));
    }
    err.clone()
}
