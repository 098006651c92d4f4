//! Integration tests: the built `hedge-scheduler` binary against real Python jobs, real files and
//! a real SQLite history. Each test gets a project folder of its own.

mod calendar;
#[macro_use]
mod cluster;
mod cluster_anomalies;
mod control;
mod executors;
mod faults;
mod fork;
mod foundation;
mod install;
mod manners;
mod nemesis;
mod observe;
mod operations;
mod page;
mod pg;
mod python_api;
mod reliability;
mod skip;
mod util;
