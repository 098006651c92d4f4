//! The history's schema: its migrations, applied in order (`PRAGMA user_version` counts those
//! applied).

/// Schema migrations, applied in order; `user_version` counts those applied.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    job          TEXT    NOT NULL,
    trigger      TEXT    NOT NULL,
    scheduled_at TEXT    NOT NULL,
    started_at   TEXT    NOT NULL,
    entered_at   TEXT,
    finished_at  TEXT,
    attempt      INTEGER NOT NULL DEFAULT 1,
    outcome      TEXT    NOT NULL,
    exit_code    INTEGER,
    signal       TEXT,
    pid          INTEGER,
    owner_pid    INTEGER,
    error        TEXT,
    result       TEXT
);
CREATE INDEX runs_job_id ON runs (job, id);
CREATE INDEX runs_running ON runs (outcome) WHERE outcome = 'running';
CREATE TABLE daemon (
    id           INTEGER PRIMARY KEY,
    pid          INTEGER NOT NULL,
    started_at   TEXT    NOT NULL,
    heartbeat_at TEXT,
    stopped_at   TEXT
);
"#,
    r#"
ALTER TABLE runs ADD COLUMN stuck INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN executor TEXT;
CREATE INDEX runs_job_slot ON runs (job, scheduled_at);
CREATE INDEX runs_stuck ON runs (stuck) WHERE stuck = 1;
"#,
    r#"
ALTER TABLE runs ADD COLUMN peak_rss_bytes INTEGER;
ALTER TABLE runs ADD COLUMN cpu_ms INTEGER;
CREATE INDEX runs_started ON runs (started_at);
"#,
    // Every index is written at every run: the daily prune can scan instead.
    r#"
DROP INDEX IF EXISTS runs_started;
"#,
    // Run ids are handed out by the writer before the row is written (a run never waits for the
    // database); `meta.next_run_id` is the first id no process has reserved. A compact `skipped`
    // row covers a whole gap of missed slots.
    r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
ALTER TABLE runs ADD COLUMN missed_count INTEGER;
ALTER TABLE runs ADD COLUMN missed_from TEXT;
ALTER TABLE runs ADD COLUMN missed_to TEXT;
CREATE INDEX runs_gaps ON runs (job, missed_to) WHERE missed_to IS NOT NULL;
"#,
    // A run's identity that no database hands out (a UUIDv7 made when it starts): its process
    // tag, its result file and every update of its row carry it, so an update never touches
    // another run's row, whatever happened to the file and its ids meanwhile.
    r#"
ALTER TABLE runs ADD COLUMN uid TEXT;
CREATE UNIQUE INDEX runs_uid ON runs (uid);
"#,
    // Cluster mode: the history is the node's journal. Rows carry the node, its incarnation and
    // the slot's fencing token; every change of a cluster row bumps `rev`, and the uploader marks
    // what the cluster's database has with `synced`.
    r#"
ALTER TABLE runs ADD COLUMN node TEXT;
ALTER TABLE runs ADD COLUMN node_epoch INTEGER;
ALTER TABLE runs ADD COLUMN fence INTEGER;
ALTER TABLE runs ADD COLUMN degraded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN rev INTEGER NOT NULL DEFAULT 1;
ALTER TABLE runs ADD COLUMN synced INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_unsynced ON runs (id) WHERE node IS NOT NULL AND synced < rev;
CREATE TRIGGER runs_rev AFTER UPDATE ON runs FOR EACH ROW
  WHEN NEW.node IS NOT NULL AND NEW.synced = OLD.synced AND NEW.rev = OLD.rev
BEGIN
  UPDATE runs SET rev = OLD.rev + 1 WHERE id = NEW.id;
END;
"#,
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
