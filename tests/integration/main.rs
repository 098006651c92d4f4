//! Integration tests: the built `hedge-scheduler` binary against real Python jobs, real files and
//! a real SQLite history. Each test gets a project folder of its own. One file per feature; the
//! harness is `util` (projects, daemons, configs), `pg` (the throwaway PostgreSQL) and `skip`
//! (tests whose tool is missing are reported skipped).

mod calendar;
#[macro_use]
mod cluster;
mod cluster_anomalies;
mod configuration;
mod console;
mod containment;
mod control;
mod executors;
mod firing;
mod fork;
mod history;
mod install;
mod lifecycle;
mod logs;
mod nemesis;
mod observe;
mod page;
mod pg;
mod python_api;
mod runs;
mod security;
mod skip;
mod util;
