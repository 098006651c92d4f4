//! The cluster's schema and statements. Migrations run in one transaction under an advisory
//! lock, so daemons starting together on an empty database apply them once.

/// Migrations, applied in order; `meta.version` counts those applied.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE SEQUENCE fence;
CREATE TABLE nodes (
  node            text PRIMARY KEY,
  epoch           bigint NOT NULL,
  host            text NOT NULL,
  pid             int NOT NULL,
  boot_id         text NOT NULL,
  version         text NOT NULL,
  jobs_hash       text NOT NULL,
  priority        int NOT NULL DEFAULT 0,
  started_at      timestamptz NOT NULL DEFAULT now(),
  heartbeat_at    timestamptz NOT NULL DEFAULT now(),
  lease_until     timestamptz NOT NULL,
  clock_offset_ms int,
  state           text NOT NULL CHECK (state IN ('alive', 'stopped', 'dead')),
  degraded_since  timestamptz
);
CREATE TABLE node_jobs (
  node     text NOT NULL REFERENCES nodes ON DELETE CASCADE,
  job      text NOT NULL,
  hash     text NOT NULL,
  PRIMARY KEY (node, job)
);
CREATE TABLE slots (
  job              text NOT NULL,
  scheduled_at     timestamptz NOT NULL,
  kind             text NOT NULL DEFAULT 'slot' CHECK (kind IN ('slot', 'manual')),
  owner_node       text NOT NULL,
  owner_epoch      bigint NOT NULL,
  owner_pid        int,
  fence            bigint NOT NULL DEFAULT nextval('fence'),
  state            text NOT NULL CHECK (state IN ('queued', 'claimed', 'running', 'done', 'skipped', 'abandoned')),
  valid_until      timestamptz NOT NULL,
  attempts         int NOT NULL DEFAULT 1,
  cancel_requested text,
  jobs_hash        text NOT NULL,
  claimed_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (job, scheduled_at)
);
CREATE UNIQUE INDEX slots_one_live ON slots (job) WHERE state IN ('claimed', 'running');
CREATE UNIQUE INDEX slots_one_queued ON slots (job) WHERE state = 'queued';
CREATE INDEX slots_owner ON slots (owner_node, owner_epoch) WHERE state IN ('claimed', 'running', 'queued');
CREATE TABLE runs (
  id             bigserial PRIMARY KEY,
  uid            text NOT NULL UNIQUE,
  job            text NOT NULL,
  trigger        text NOT NULL,
  scheduled_at   timestamptz NOT NULL,
  started_at     timestamptz NOT NULL,
  entered_at     timestamptz,
  finished_at    timestamptz,
  attempt        int NOT NULL DEFAULT 1,
  outcome        text NOT NULL,
  exit_code      int,
  signal         text,
  pid            int,
  owner_pid      int,
  error          text,
  result         text,
  executor       text,
  stuck          boolean NOT NULL DEFAULT false,
  peak_rss_bytes bigint,
  cpu_ms         bigint,
  missed_count   bigint,
  missed_from    timestamptz,
  missed_to      timestamptz,
  node           text NOT NULL,
  node_epoch     bigint NOT NULL,
  fence          bigint,
  stale          boolean NOT NULL DEFAULT false,
  degraded       boolean NOT NULL DEFAULT false,
  duplicate      boolean NOT NULL DEFAULT false,
  local_id       bigint,
  rev            bigint NOT NULL DEFAULT 1
);
CREATE INDEX runs_job_id ON runs (job, id);
CREATE INDEX runs_slot ON runs (job, scheduled_at);
CREATE INDEX runs_running ON runs (node, node_epoch) WHERE outcome = 'running';
"#,
    r#"
-- A node's presence: its coordinator's session holds an advisory lock (key `lock_key`), which
-- PostgreSQL releases the moment that connection dies. A dead process is absent at once.
ALTER TABLE nodes ADD COLUMN lock_key bigint;
-- Since when the node's process has been absent, as the sweeps saw it.
ALTER TABLE nodes ADD COLUMN absent_since timestamptz;
CREATE FUNCTION present(key bigint) RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT key IS NULL OR EXISTS (
    SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory' AND granted AND objsubid = 1
       AND classid = (key >> 32)::oid AND objid = (key & 4294967295)::oid
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))
$$;
-- `orphan`: a claim whose owner is dead or absent, set aside so that the job's new slots need
-- not wait for it (it leaves `slots_one_live`); the sweep reruns or abandons it. `returned`: a
-- claim its owner gave back, its run unfinished, after it was declared dead (paused, cut off):
-- the sweep reruns it while it is worth running.
ALTER TABLE slots DROP CONSTRAINT slots_state_check;
ALTER TABLE slots ADD CONSTRAINT slots_state_check
  CHECK (state IN ('queued', 'claimed', 'running', 'orphan', 'returned', 'done', 'skipped',
                   'abandoned'));
DROP INDEX slots_owner;
CREATE INDEX slots_owner ON slots (owner_node, owner_epoch)
  WHERE state IN ('claimed', 'running', 'queued', 'orphan', 'returned');
"#,
];

/// Joins the cluster as `node`: a new epoch, unless another live daemon holds the name.
pub(super) const JOIN: &str = "
INSERT INTO nodes AS n (node, epoch, host, pid, boot_id, version, jobs_hash, priority, lease_until, state)
VALUES ($1, 1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8), 'alive')
ON CONFLICT (node) DO UPDATE
  SET epoch = n.epoch + 1, host = EXCLUDED.host, pid = EXCLUDED.pid, boot_id = EXCLUDED.boot_id,
      version = EXCLUDED.version, jobs_hash = EXCLUDED.jobs_hash, priority = EXCLUDED.priority,
      started_at = now(), heartbeat_at = now(), lease_until = EXCLUDED.lease_until,
      state = 'alive', degraded_since = NULL, clock_offset_ms = NULL
  WHERE n.state <> 'alive' OR n.lease_until < now()
     OR (n.host = EXCLUDED.host AND n.boot_id = EXCLUDED.boot_id AND $9)
RETURNING epoch, (SELECT e.epoch FROM nodes e WHERE e.node = $1)";

/// Who holds a node name (when a join was refused).
pub(super) const NODE_HOLDER: &str = "
SELECT host, pid, extract(epoch FROM now() - heartbeat_at)::float8 FROM nodes WHERE node = $1";

/// Renews the lease; no row: the node was declared dead (or stopped).
pub(super) const HEARTBEAT: &str = "
UPDATE nodes SET heartbeat_at = now(), lease_until = now() + make_interval(secs => $3),
                 clock_offset_ms = $4, degraded_since = coalesce(degraded_since, $5)
 WHERE node = $1 AND epoch = $2 AND state = 'alive'
RETURNING now()";

/// A graceful stop: peers need not wait for the lease.
pub(super) const LEAVE: &str = "
UPDATE nodes SET state = 'stopped', lease_until = now() WHERE node = $1 AND epoch = $2";

/// Claims a slot, only for a live incarnation of the node (one declared dead claims nothing).
/// The claim renews the node's lease too: a node that wins a slot is live, and its trust in the
/// lease holds from here (a late "lease in doubt" does not end the run it just claimed: nemesis
/// A10). `fence` is null when another node has the slot (`owner`), when the database clock says
/// it is too early, when this incarnation is not alive (`alive`), or when the slot is the
/// primary's (`$11`: a standby's claim of an `on_database_loss = "primary"` job while the primary
/// is neither declared dead nor gone; it may be running the slot without the database, or about
/// to claim it: nemesis A6, and the model's trace of a standby that claimed first and a primary
/// that lost the database again). A live claim of the job elsewhere raises `slots_one_live`.
pub(super) const CLAIM: &str = "
WITH r AS (
  UPDATE nodes SET heartbeat_at = now(), lease_until = now() + make_interval(secs => $10)
   WHERE node = $4 AND epoch = $5 AND state = 'alive' AND lease_until > now()
  RETURNING 1),
p AS (
  SELECT $11::bool AND EXISTS (
    SELECT 1 FROM nodes WHERE priority = 0 AND node <> $4 AND state = 'alive'
                         AND (present(lock_key)
                              OR now() - pg_postmaster_start_time() < make_interval(secs => $10))
                         -- A primary whose clock is off while another node's agrees stands by.
                         AND NOT (abs(coalesce(clock_offset_ms, 0)) > $12::int
                                  AND EXISTS (SELECT 1 FROM nodes o
                                               WHERE o.node <> nodes.node AND o.state = 'alive'
                                                 AND abs(coalesce(o.clock_offset_ms, 0)) <= $12::int))
                         AND EXISTS (SELECT 1 FROM node_jobs nj WHERE nj.node = nodes.node
                                                                 AND nj.job = $1)) AS doubt),
c AS (
  INSERT INTO slots (job, scheduled_at, kind, owner_node, owner_epoch, owner_pid, state, valid_until, jobs_hash)
  SELECT $1, $2::timestamptz, $3, $4, $5, $6, 'claimed', $7, $8
   WHERE ($9::float8 IS NULL OR now() >= $2::timestamptz - make_interval(secs => $9))
     AND EXISTS (SELECT 1 FROM r) AND NOT (SELECT doubt FROM p)
  ON CONFLICT (job, scheduled_at) DO NOTHING
  RETURNING fence)
SELECT (SELECT fence FROM c),
       (SELECT owner_node FROM slots WHERE job = $1 AND scheduled_at = $2::timestamptz),
       now(),
       EXISTS (SELECT 1 FROM r),
       (SELECT doubt FROM p)";

/// Slots this node ran without the database: recorded `done` under it, before its lease is
/// renewed (a slot another node claimed meanwhile keeps its row; both runs are in `runs`).
pub(super) const DEGRADED_SLOTS: &str = "
INSERT INTO slots (job, scheduled_at, owner_node, owner_epoch, state, valid_until, jobs_hash)
SELECT j, s, $3, $4, 'done', s, h FROM unnest($1::text[], $2::timestamptz[], $5::text[]) AS t(j, s, h)
ON CONFLICT (job, scheduled_at) DO NOTHING";

/// The live claim of a job: who runs it; whether its owner is alive (its lease unexpired, or the
/// server up for less than a lease `$2`: nobody could renew while it was down); the database's
/// time; whether the owner's process is present (its session holds the node's lock); whether
/// the server has been up long enough (`$3`, a reconnection) for an absence to mean something.
pub(super) const LIVE_CLAIM: &str = "
SELECT s.owner_node, s.owner_epoch, s.owner_pid, s.scheduled_at, s.fence, s.claimed_at,
       s.kind = 'manual' OR coalesce(n.state = 'alive' AND n.epoch = s.owner_epoch
                                     AND (n.lease_until > now()
                                          OR now() - pg_postmaster_start_time()
                                             < make_interval(secs => $2::float8)), false),
       CASE WHEN s.kind = 'manual' THEN 0
            ELSE extract(epoch FROM now() - n.heartbeat_at)::float8 END,
       now(),
       s.kind = 'manual' OR coalesce(n.pid = s.owner_pid AND present(n.lock_key), false),
       now() - pg_postmaster_start_time() > make_interval(secs => $3::float8),
       s.kind = 'manual'
  FROM slots s LEFT JOIN nodes n ON n.node = s.owner_node
 WHERE s.job = $1 AND s.state IN ('claimed', 'running')";

/// A rejoining process adopts its previous incarnation's live slots (claimed by this process,
/// fence unchanged, so nobody took them over): its runs of them go on under the new epoch.
pub(super) const ADOPT: &str = "
UPDATE slots SET owner_epoch = $3
 WHERE owner_node = $1 AND owner_epoch = $2 AND owner_pid = $4
   AND state IN ('claimed', 'running', 'orphan')
RETURNING fence";

/// Each node's absence, as this sweep sees it: since when its session has been gone.
pub(super) const ABSENCE: &str = "
UPDATE nodes SET absent_since = CASE WHEN present(lock_key) THEN NULL
                                     ELSE coalesce(absent_since, now()) END
 WHERE lock_key IS NOT NULL
   AND ((present(lock_key) AND absent_since IS NOT NULL)
        OR (NOT present(lock_key) AND absent_since IS NULL))";

/// A live claim set aside (`orphan`): its owner is dead or absent, the job's new slots go on.
pub(super) const ORPHAN: &str = "
UPDATE slots SET state = 'orphan'
 WHERE job = $1 AND fence = $2 AND state IN ('claimed', 'running') AND kind = 'slot'";

/// A slot recorded as not run (overlap across nodes, or nobody ran it); one row whoever sees it.
/// A decisive row obeys the claim's guards: the database's clock has reached the slot, and the
/// writer is a live incarnation (a node whose clock stepped forward, or that was declared dead,
/// writes nothing: nemesis A1). Answers the new row's fence (null when not written), whether
/// the slot already had a row, and whether the writer is live.
pub(super) const SLOT_SKIPPED: &str = "
WITH s AS (
  INSERT INTO slots (job, scheduled_at, owner_node, owner_epoch, state, valid_until, jobs_hash)
  SELECT $1, $2::timestamptz, $3, $4, 'skipped', $2::timestamptz, $5
   WHERE now() >= $2::timestamptz
     AND EXISTS (SELECT 1 FROM nodes WHERE node = $3 AND epoch = $4 AND state = 'alive'
                                       AND lease_until > now())
  ON CONFLICT (job, scheduled_at) DO NOTHING
  RETURNING fence)
SELECT (SELECT fence FROM s),
       EXISTS (SELECT 1 FROM slots WHERE job = $1 AND scheduled_at = $2::timestamptz),
       EXISTS (SELECT 1 FROM nodes WHERE node = $3 AND epoch = $4 AND state = 'alive'
                                     AND lease_until > now())";

/// The gap audit: slots past their bound that no node claimed, recorded or ran (no slot row,
/// no run row of the slot or a gap row covering it) become `skipped` under this node, with the claim's guards; the ones
/// written come back (this node records them, once cluster-wide).
pub(super) const AUDIT_GAPS: &str = "
INSERT INTO slots (job, scheduled_at, owner_node, owner_epoch, state, valid_until, jobs_hash)
SELECT $1, s, $3, $4, 'skipped', s, $5 FROM unnest($2::timestamptz[]) AS t(s)
 WHERE now() >= s
   AND EXISTS (SELECT 1 FROM nodes WHERE node = $3 AND epoch = $4 AND state = 'alive'
                                     AND lease_until > now())
   AND NOT EXISTS (SELECT 1 FROM runs r
                    WHERE r.job = $1
                      AND (r.scheduled_at = s OR (r.missed_from <= s AND s <= r.missed_to)))
ON CONFLICT (job, scheduled_at) DO NOTHING
RETURNING scheduled_at";

/// The slot's run has ended (and will not be retried): the job is free cluster-wide.
pub(super) const RELEASE: &str = "
UPDATE slots SET state = $4 WHERE job = $1 AND scheduled_at = $2 AND fence = $3
   AND state IN ('claimed', 'running', 'queued', 'orphan')";

/// A claim left live by this node's own earlier incarnation, or by this incarnation's run that
/// ended without releasing it (the database was unreachable then).
pub(super) const RELEASE_OWN: &str = "
UPDATE slots SET state = 'done'
 WHERE job = $1 AND owner_node = $2 AND fence = $3 AND state IN ('claimed', 'running')";

/// Nodes whose lease ran out are dead (several sweepers at once: one wins each). Not while the
/// server itself has been up for less than a lease: nobody could renew while it was down.
pub(super) const SWEEP_DEAD: &str = "
UPDATE nodes SET state = 'dead'
 WHERE state = 'alive' AND lease_until < now()
   AND now() - pg_postmaster_start_time() > make_interval(secs => $1)
RETURNING node, epoch, lease_until";

/// A dead incarnation's live slots of `rerun` jobs still worth running: now ours. Not while the
/// process that claimed one is still present (its session holds the node's lock: it is paused,
/// behind a black hole, or rejoined as a new epoch): its run may have completed, and would be
/// doubled (nemesis A5); it gives the slot back itself (`returned`) if its run did not complete.
/// Nor while the job runs elsewhere. `$7`: the owner is alive, only what it gave back. `$8`: how
/// long a process must have been absent (sweeps apart) to be taken for gone.
pub(super) const TAKE_OVER: &str = "
UPDATE slots SET owner_node = $3, owner_epoch = $4, owner_pid = $5, fence = nextval('fence'),
                 state = 'claimed', attempts = attempts + 1
 WHERE owner_node = $1 AND owner_epoch = $2
   AND state IN ('claimed', 'running', 'orphan', 'returned')
   AND valid_until > now() AND job = ANY($6) AND (NOT $7 OR state = 'returned')
   AND (state = 'returned'
        OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node = $1 AND n.pid = slots.owner_pid
                         AND (present(n.lock_key) OR n.absent_since IS NULL
                              OR n.absent_since > now() - make_interval(secs => $8))))
   AND NOT EXISTS (SELECT 1 FROM slots l WHERE l.job = slots.job AND l.state IN ('claimed', 'running')
                     AND l.scheduled_at <> slots.scheduled_at)
RETURNING job, scheduled_at, fence, attempts, kind";

/// The rest of a dead incarnation's live slots that will not run again: too late, or not to be
/// rerun (`takeover = "abandon"`, a stopped node's). A slot still worth running whose owner is
/// present waits for it (it may come back and record its run) until the slot's bound. `$4`: the
/// owner is alive, only what it gave back.
pub(super) const ABANDON_SLOTS: &str = "
UPDATE slots SET state = 'abandoned'
 WHERE owner_node = $1 AND owner_epoch = $2
   AND state IN ('claimed', 'running', 'queued', 'orphan', 'returned')
   AND (valid_until <= now() OR NOT (job = ANY($3))) AND (NOT $4 OR state = 'returned')
RETURNING job, scheduled_at, valid_until";

/// A dead incarnation's running row of one slot.
pub(super) const ABANDON_RUN: &str = "
UPDATE runs SET outcome = 'abandoned', finished_at = now(), error = $5
 WHERE node = $1 AND node_epoch = $2 AND job = $3 AND scheduled_at = $4 AND outcome = 'running'";

/// A dead incarnation's running rows.
pub(super) const ABANDON_RUNS: &str = "
UPDATE runs SET outcome = 'abandoned', finished_at = now(), error = $3
 WHERE node = $1 AND node_epoch = $2 AND outcome = 'running'
   AND NOT EXISTS (SELECT 1 FROM slots s WHERE s.job = runs.job AND s.scheduled_at = runs.scheduled_at
                     AND s.owner_node = $1 AND s.owner_epoch = $2
                     AND s.state IN ('claimed', 'running', 'orphan', 'returned'))";

/// A row for a dead incarnation's slot that it never recorded (it died between claim and start,
/// or before its start row reached the database).
pub(super) const ABANDONED_ROW: &str = "
INSERT INTO runs (uid, job, trigger, scheduled_at, started_at, finished_at, attempt, outcome,
                  error, node, node_epoch, fence)
SELECT $1, $2, 'schedule', $3, now(), now(), 1, 'abandoned', $4, $5, $6, $7
 WHERE NOT EXISTS (SELECT 1 FROM runs WHERE job = $2 AND scheduled_at = $3 AND node = $5
                                        AND node_epoch = $6)";

/// Uploads one row of a node's journal (idempotent by `uid`, newer revisions win). The row a
/// sweeper wrote for the node's run while it could not tell (`abandoned`, no journal id) gives
/// way to the node's own, and a slot given up while its run in fact succeeded under its fence
/// is `done` (nemesis A8).
pub(super) const UPLOAD: &str = "
WITH phantom AS (
  DELETE FROM runs WHERE job = $2 AND scheduled_at = $4 AND node = $23 AND node_epoch = $24
                     AND local_id IS NULL AND outcome = 'abandoned' AND uid <> $1),
     settled AS (
  UPDATE slots SET state = 'done'
   WHERE $9 = 'success' AND job = $2 AND scheduled_at = $4 AND fence = $25::bigint
     AND state = 'abandoned')
INSERT INTO runs AS r (uid, job, trigger, scheduled_at, started_at, entered_at, finished_at,
                  attempt, outcome, exit_code, signal, pid, owner_pid, error, result, executor,
                  stuck, peak_rss_bytes, cpu_ms, missed_count, missed_from, missed_to, node,
                  node_epoch, fence, stale, degraded, local_id, rev)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
        $20, $21, $22, $23, $24, $25,
        $25::bigint IS NOT NULL AND EXISTS (SELECT 1 FROM slots s WHERE s.job = $2
                                            AND s.scheduled_at = $4 AND s.fence <> $25::bigint),
        $26, $27, $28)
ON CONFLICT (uid) DO UPDATE SET
  entered_at = EXCLUDED.entered_at, finished_at = EXCLUDED.finished_at,
  outcome = EXCLUDED.outcome, exit_code = EXCLUDED.exit_code, signal = EXCLUDED.signal,
  pid = EXCLUDED.pid, error = EXCLUDED.error, result = EXCLUDED.result, stuck = EXCLUDED.stuck,
  peak_rss_bytes = EXCLUDED.peak_rss_bytes, cpu_ms = EXCLUDED.cpu_ms,
  stale = r.stale OR EXCLUDED.stale, rev = EXCLUDED.rev
 WHERE r.rev < EXCLUDED.rev";

/// A manual run's claim (`run-once`): epoch 0, a lease of its own renewed while it runs.
pub(super) const CLAIM_MANUAL: &str = "
INSERT INTO slots (job, scheduled_at, kind, owner_node, owner_epoch, owner_pid, state, valid_until, jobs_hash)
VALUES ($1, $2, 'manual', $3, 0, $5, 'claimed', now() + make_interval(secs => $4), '')
RETURNING fence";

/// A manual run renews its claim.
pub(super) const RENEW_MANUAL: &str = "
UPDATE slots SET valid_until = now() + make_interval(secs => $4)
 WHERE job = $1 AND scheduled_at = $2 AND fence = $3 AND state IN ('claimed', 'running')
RETURNING cancel_requested";

/// Manual claims whose process stopped renewing them: abandoned.
pub(super) const EXPIRE_MANUAL: &str = "
UPDATE slots SET state = 'abandoned'
 WHERE kind = 'manual' AND state IN ('claimed', 'running') AND valid_until < now()
RETURNING job, scheduled_at, owner_node";

/// The run of an expired manual claim.
pub(super) const ABANDON_MANUAL_RUN: &str = "
UPDATE runs SET outcome = 'abandoned', finished_at = now(), error = $4
 WHERE job = $1 AND scheduled_at = $2 AND node = $3 AND trigger = 'manual' AND outcome = 'running'";

/// Shared jobs that a live node (not `$1`) defines with another hash than ours.
pub(super) const DRIFT: &str = "
SELECT nj.node, nj.job
  FROM node_jobs nj JOIN nodes n ON n.node = nj.node
 WHERE n.state = 'alive' AND n.lease_until > now() AND nj.node <> $1
   AND nj.job = ANY($2::text[])
   AND nj.hash <> ($3::text[])[array_position($2::text[], nj.job)]
 ORDER BY nj.job, nj.node";

/// Runs and slots older than the retention (neither running nor live).
pub(super) const PRUNE: &str = "
WITH r AS (DELETE FROM runs WHERE started_at < now() - make_interval(secs => $1)
                              AND outcome <> 'running' RETURNING 1),
     s AS (DELETE FROM slots WHERE scheduled_at < now() - make_interval(secs => $1)
                               AND state NOT IN ('claimed', 'running', 'queued') RETURNING 1)
SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM s)";
