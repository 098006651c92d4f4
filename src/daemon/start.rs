//! The daemon's start: the instance lock, the history, the fork server's preloads, the
//! cluster, what a dead process left, the jobs' states, the HTTP endpoint; then the loop may turn.

use super::*;

/// A started daemon: the dispatcher, its jobs, what wakes its loop, and the history's writer.
pub(super) struct Started {
    pub(super) d: Dispatcher,
    pub(super) jobs: Vec<JobState>,
    pub(super) inbox: Inbox,
    pub(super) recorder: Recorder,
}

/// Starts the daemon (its loop not yet turning).
pub(super) async fn start(
    config: Config,
    interpreter: Interpreter,
    allow_drift: bool,
    (forks, warming): (
        Arc<crate::runner::ForkPool>,
        std::thread::JoinHandle<Result<()>>,
    ),
) -> Result<Started> {
    let started_at = Utc::now();
    let lock = InstanceLock::acquire(
        &config.scheduler.log_dir,
        started_at,
        config.calendar().tz(),
    )?;
    let recorder = Recorder::open(&config.scheduler.history, RESERVE_IDS)?;
    // The fork server has been importing its preloads meanwhile: a preload that fails or starts
    // a thread stops the start here, before this daemon joins a cluster or records anything.
    warming
        .join()
        .map_err(|_| Error::Internal("the fork server's start failed".into()))??;
    forks.announce();
    // Containment is set up now: the first run's child can be forked ahead, into its cgroup.
    forks.spare();
    // Cluster mode: join first, so what is recorded from here on carries the node.
    let (node, cluster_events, cluster_last) =
        join_cluster(&config, &recorder, allow_drift).await?;
    let reader = History::open_read_only(&config.scheduler.history)?;
    let abandoned = settle_dead(&config, &recorder, reader.as_ref()).await?;
    recorder.daemon_started(std::process::id(), started_at);
    let last_slots = last_slots(&config, reader.as_ref(), &cluster_last)?;
    let obs = crate::observe::Observer::start(&config, reader.as_ref());
    let kept = crate::control::load(&config.scheduler.log_dir);
    let backfill = kept_backfill(&config, reader.as_ref(), &kept)?;
    drop(reader);

    let calendar = config.calendar();
    let config = Arc::new(config);
    let env = Arc::new(RunEnv::new(
        Arc::clone(&config),
        interpreter.path.clone(),
        recorder.clone(),
        Arc::clone(&forks),
    ));

    banner(&config, &interpreter, &calendar, abandoned);
    // In a cluster the loop decides by the cluster's time (the database's clock), not by this
    // host's wall clock, which may step.
    let now = node.as_ref().map_or_else(Utc::now, |n| n.now());
    let mut jobs = initial_jobs(&config, &calendar, last_slots, now);
    let (inbox, feeds) = Inbox::open(&config, cluster_events)?;
    let mut d = Dispatcher::new(
        started_at,
        (Arc::clone(&config), Arc::clone(&env), Arc::clone(&calendar)),
        (feeds.events, feeds.chores),
        lock,
        node,
        obs,
    );
    d.start_audits(&jobs, now);
    d.restore(&mut jobs, kept, backfill);
    tokio::spawn(crate::control::listen(
        config.scheduler.log_dir.clone(),
        feeds.control,
    ));
    d.web = serve_http(&config, &d, feeds.probes);
    say_started(&d, jobs.len(), abandoned);
    d.health(&mut jobs);
    crate::health::notify_systemd("READY=1");
    Ok(Started {
        d,
        jobs,
        inbox,
        recorder,
    })
}

/// The enabled jobs' states at the start (from the newest slot each dealt with), each announced
/// with its next fire, after a line on the market now.
fn initial_jobs(
    config: &Config,
    calendar: &Arc<crate::calendar::Calendar>,
    last_slots: Vec<Option<DateTime<Utc>>>,
    now: DateTime<Utc>,
) -> Vec<JobState> {
    let market = crate::market::at_instant(calendar, now);
    tracing::info!(
        "{} {}",
        if market.open { "📈" } else { "💤" },
        market.summary
    );
    let jobs: Vec<JobState> = config
        .jobs
        .iter()
        .filter(|j| j.enabled)
        .zip(last_slots)
        .map(|(job, last)| JobState::new(Arc::new(job.clone()), calendar, last, now))
        .collect();
    announce(&jobs, calendar, now);
    jobs
}

/// What feeds the loop's inbox.
struct Feeds {
    events: mpsc::UnboundedSender<RunEvent>,
    control: mpsc::UnboundedSender<crate::control::Asked>,
    /// `/healthz` asks the loop to answer.
    probes: mpsc::UnboundedSender<tokio::sync::oneshot::Sender<()>>,
    chores: mpsc::UnboundedSender<Chore>,
}

impl Inbox {
    /// The loop's inbox, its signals watched from now on, and what feeds it.
    fn open(
        config: &Config,
        cluster: Option<mpsc::UnboundedReceiver<crate::cluster::Event>>,
    ) -> Result<(Inbox, Feeds)> {
        let watch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| Error::io(format!("cannot watch {name}"), e))
        };
        let sigterm = watch(SignalKind::terminate(), "SIGTERM")?;
        let sigint = watch(SignalKind::interrupt(), "SIGINT")?;
        let sighup = watch(SignalKind::hangup(), "SIGHUP")?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let (control_tx, control) = mpsc::unbounded_channel();
        let (probes_tx, probes) = mpsc::unbounded_channel();
        let (chores_tx, chores) = mpsc::unbounded_channel();
        let (health_every, report_every, watchdog) = timers(config);
        let inbox = Inbox {
            sigterm,
            sigint,
            sighup,
            events,
            cluster,
            chores,
            probes,
            control,
            health_every,
            report_every,
            watchdog,
        };
        let feeds = Feeds {
            events: events_tx,
            control: control_tx,
            probes: probes_tx,
            chores: chores_tx,
        };
        Ok((inbox, feeds))
    }
}

impl Dispatcher {
    /// The gap audit starts two leases before this start: a slot missed just before it and not
    /// recorded then (a live node might still have claimed it) is audited too; older ones are
    /// in the catch-up's gap row.
    fn start_audits(&mut self, jobs: &[JobState], now: DateTime<Utc>) {
        let Some(node) = &self.node else { return };
        let back = chrono::Duration::from_std(node.config.lease * 2).unwrap_or_default();
        for state in jobs {
            self.audited
                .insert(state.job.id.clone(), state.checked.max(now - back));
        }
    }
}

/// The node and its events, and the newest slot of each job any node dealt with (cluster mode:
/// joined first, so what is recorded from here on carries the node).
type Joined = (
    Option<crate::cluster::Node>,
    Option<mpsc::UnboundedReceiver<crate::cluster::Event>>,
    HashMap<String, DateTime<Utc>>,
);

async fn join_cluster(config: &Config, recorder: &Recorder, allow_drift: bool) -> Result<Joined> {
    Ok(if let Some(cluster) = &config.cluster {
        let (node, events) =
            crate::cluster::Node::start(config, recorder.clone(), allow_drift).await?;
        let last = node.last_slots().await;
        // The runs end if this daemon is silent (stopped, hung) past its trust deadline: by
        // then another node may be given their slots.
        crate::contain::keeper_note(crate::contain::KeeperNote::Deadman(cluster.trust()));
        let every = (cluster.heartbeat / 4).max(Duration::from_millis(25));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                crate::contain::keeper_note(crate::contain::KeeperNote::Ping);
            }
        });
        (Some(node), Some(events), last)
    } else {
        (None, None, HashMap::new())
    })
}

/// What a dead process left: its rows that could not be written go in first, its runs are
/// settled (abandoned, or recorded from the results they left); how many.
async fn settle_dead(
    config: &Config,
    recorder: &Recorder,
    reader: Option<&History>,
) -> Result<usize> {
    let abandoned: usize = match reader {
        Some(h) => {
            // What a previous process could not write goes in first: rows it ended are not
            // settled again.
            let r = recorder.clone();
            let _ = tokio::task::spawn_blocking(move || r.flush(Duration::from_secs(2))).await;
            let settled = abandon_dead_runs(h, recorder, config).await?;
            let recorded = runner::record_left_results(config, h, recorder);
            if recorded > 0 {
                tracing::warn!(
                    "🧹 {} whose rows were lost (the history refused writes when the scheduler died) recorded from the results they left",
                    crate::fmt::n(recorded, "run")
                );
            }
            settled + recorded
        }
        None => 0,
    };
    if abandoned > 0 {
        // Before anything fires, so `status` never shows a dead run as running; bounded, so a
        // locked history cannot hold the start.
        let r = recorder.clone();
        let _ = tokio::task::spawn_blocking(move || r.flush(Duration::from_secs(2))).await;
    }
    Ok(abandoned)
}

/// The backfill ranges kept: their slots still without a successful run go on.
fn kept_backfill(
    config: &Config,
    reader: Option<&History>,
    kept: &crate::control::Persisted,
) -> Result<HashMap<String, Vec<DateTime<Utc>>>> {
    let mut backfill: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
    for (id, spans) in &kept.backfill {
        let Some(job) = config.job(id) else { continue };
        let mut slots = std::collections::BTreeSet::new();
        for span in spans {
            slots.extend(crate::control::missing_slots(
                job,
                &config.calendar(),
                reader,
                *span,
                Utc::now(),
            )?);
        }
        backfill.insert(id.clone(), slots.into_iter().collect());
    }
    Ok(backfill)
}

/// The HTTP endpoint (`[http]`), on a runtime and a thread of its own: `/healthz` answers (503)
/// even when the loop's thread is stuck, and no request ever runs on the loop's thread.
fn serve_http(
    config: &Arc<Config>,
    d: &Dispatcher,
    probes: mpsc::UnboundedSender<tokio::sync::oneshot::Sender<()>>,
) -> Option<Arc<crate::web::Web>> {
    let http = config.http.clone()?;
    let web = crate::web::Web::new(Arc::clone(config), Arc::clone(&d.obs.metrics), probes);
    // A runtime of its own, on a thread of its own: `/healthz` answers (503) even when the
    // loop's thread is stuck, and no request ever runs on the loop's thread.
    let served = Arc::clone(&web);
    let spawned = std::thread::Builder::new()
        .name("hedge-http".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(crate::web::serve(http, served)),
                Err(e) => tracing::error!("❗ the HTTP endpoint cannot start: {e}"),
            }
        });
    if let Err(e) = spawned {
        tracing::error!("❗ the HTTP endpoint cannot start: {e}");
    }
    Some(web)
}

/// Says each job's next fire (or that it never fires).
fn announce(jobs: &[JobState], calendar: &Calendar, now: DateTime<Utc>) {
    for state in jobs {
        let upcoming = state
            .next
            .filter(|t| *t > now)
            .or_else(|| state.job.trigger.next_fire_after(calendar, now));
        match upcoming {
            Some(at) => tracing::info!(
                "   {:<20} next fire {}",
                state.job.id,
                at.with_timezone(&calendar.tz())
                    .format("%Y-%m-%d %H:%M:%S %Z")
            ),
            None => tracing::warn!("   {:<20} never fires: no slot ahead", state.job.id),
        }
    }
}

/// The loop's timers: the health check, the status report, and systemd's watchdog (pinged from
/// the loop at half its period, whatever `health_interval` says: a ping means the loop that
/// fires the jobs turns).
fn timers(
    config: &Config,
) -> (
    tokio::time::Interval,
    tokio::time::Interval,
    Option<tokio::time::Interval>,
) {
    let mut health_every = tokio::time::interval_at(
        Instant::now() + config.scheduler.health_interval,
        config.scheduler.health_interval,
    );
    health_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report_every = tokio::time::interval_at(
        Instant::now() + config.scheduler.report_interval,
        config.scheduler.report_interval,
    );
    report_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watchdog = crate::health::watchdog().map(|every| {
        tracing::info!(
            "🐕 systemd watchdog: pinged every {}",
            humantime::format_duration(every)
        );
        let mut i = tokio::time::interval(every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    (health_every, report_every, watchdog)
}

/// Says the daemon started (the log, and the notifications), and after a crash what of the dead
/// process was settled.
fn say_started(d: &Dispatcher, jobs: usize, abandoned: usize) {
    tracing::info!(
        "✅ All services initialized ({})",
        crate::fmt::n(jobs, "job")
    );
    d.obs.daemon(
        &d.config,
        format!(
            "🟢 hedge-scheduler started (PID {}, {})",
            std::process::id(),
            crate::fmt::n(jobs, "job")
        ),
    );
    if abandoned > 0 {
        d.obs.daemon(
            &d.config,
            format!(
                "🧹 hedge-scheduler started after a crash: {} of the dead process settled",
                crate::fmt::n(abandoned, "run")
            ),
        );
    }
}

/// Each enabled job's last slot: this host's history's, or in a cluster the newest slot any
/// node dealt with.
fn last_slots(
    config: &Config,
    reader: Option<&History>,
    cluster_last: &HashMap<String, DateTime<Utc>>,
) -> Result<Vec<Option<DateTime<Utc>>>> {
    config
        .jobs
        .iter()
        .filter(|j| j.enabled)
        .map(|j| {
            let local = match reader {
                Some(h) => h.last_slot(&j.id)?,
                None => None,
            };
            // In a cluster, the newest slot any node dealt with.
            Ok(local.max(cluster_last.get(&j.id).copied()))
        })
        .collect()
}

impl Dispatcher {
    /// The dispatcher of a daemon started at `started_at`, before anything is restored.
    fn new(
        started_at: DateTime<Utc>,
        (config, env, calendar): (Arc<Config>, Arc<RunEnv>, Arc<Calendar>),
        (events, chores): (
            mpsc::UnboundedSender<RunEvent>,
            mpsc::UnboundedSender<Chore>,
        ),
        lock: InstanceLock,
        node: Option<crate::cluster::Node>,
        obs: crate::observe::Observer,
    ) -> Dispatcher {
        Dispatcher {
            started_at,
            saver: crate::control::Saver::start(config.scheduler.log_dir.clone()),
            config,
            env,
            calendar,
            events,
            chores,
            tasks: JoinSet::new(),
            cancels: HashMap::new(),
            lock: Arc::new(Mutex::new(lock)),
            lag: LagStats::default(),
            daily_done: None,
            health_running: false,
            report_running: false,
            reloading: None,
            reload_waiters: Vec::new(),
            lead: node
                .as_ref()
                .map_or(decide::LEAD, |n| n.config.claim_lead()),
            node,
            web: None,
            obs,
            kept: crate::control::Persisted::default(),
            pause_rows: HashMap::new(),
            audited: HashMap::new(),
            backfill_spans: HashMap::new(),
        }
    }
}
