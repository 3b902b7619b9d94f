-- Task records: a unit of work of one identity. A grant names its task by the task's id in
-- `grants.task` / `leases.task` (the free task text of older grants stays valid there), so
-- ending a task revokes its leases through the existing `leases_task` index.
CREATE TABLE tasks (
    id          TEXT    PRIMARY KEY,
    identity    TEXT    NOT NULL,
    owner       TEXT    NOT NULL,
    purpose     TEXT    NOT NULL,
    parent      TEXT,
    state       TEXT    NOT NULL,
    deadline    BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    ended_at    BIGINT
);
-- The scheduler's next deadline and the due sweep read open tasks by deadline only.
CREATE INDEX tasks_open_deadline ON tasks (deadline) WHERE state = 'open';
-- Ending a task walks down to its children.
CREATE INDEX tasks_parent ON tasks (parent) WHERE parent IS NOT NULL;
CREATE INDEX tasks_identity ON tasks (identity, created_at);
CREATE INDEX tasks_created ON tasks (created_at);
