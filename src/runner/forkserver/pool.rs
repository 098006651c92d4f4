//! The fork servers of a daemon (or of `run-once`): one at a time, replaced when stale.

use super::*;

/// Why a run got a new server: a note for its log.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub(crate) text: String,
    /// The previous server was lost (it died, or did not answer), where a planned replacement
    /// (recycled, reloaded) is not: the run's row says it ran on a new one.
    pub(crate) lost: bool,
}

/// The fork servers of a daemon (or of `run-once`): one at a time, replaced when stale.
///
/// `current` is only ever held for a moment (the loop's thread may look at it); a start, which
/// takes as long as the preloads' imports, holds `starting` instead, on a blocking thread.
#[derive(Default)]
pub struct ForkPool {
    current: Mutex<Option<Arc<Server>>>,
    starting: Mutex<()>,
}

impl ForkPool {
    fn current(&self) -> Option<Arc<Server>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current server if it can take a run; else why a new one is needed (a note for the
    /// run's log), `None` when there was none.
    fn check_current(&self, config: &Config, python: &Path) -> Result<Arc<Server>, Option<Note>> {
        let Some(server) = self.current() else {
            return Err(None);
        };
        if let Some(why) = server.retiring() {
            return Err(Some(Note {
                text: format!("fork server {} replaced: {why}", server.pid),
                lost: false,
            }));
        }
        if let Some(why) = server.dead() {
            return Err(Some(Note {
                text: format!("the fork server {} {why}: started a new one", server.pid),
                lost: true,
            }));
        }
        if let Some(why) = server.stale(config, python) {
            server.retire(why.clone());
            return Err(Some(Note {
                text: format!("fork server {} replaced: {why}", server.pid),
                lost: false,
            }));
        }
        Ok(server)
    }

    /// A server ready to fork for `config`, started if there is none or the one there is stale
    /// or gone; with a note for the run's log when a new one had to be started. Blocking.
    pub(crate) fn server(
        &self,
        config: &Config,
        python: &Path,
    ) -> Result<(Arc<Server>, Option<Note>), StartError> {
        self.get(config, python, true)
    }

    fn get(
        &self,
        config: &Config,
        python: &Path,
        announce: bool,
    ) -> Result<(Arc<Server>, Option<Note>), StartError> {
        let first = match self.check_current(config, python) {
            Ok(server) => {
                server.prepare_spare();
                return Ok((server, None));
            }
            Err(note) => note,
        };
        let _one_start = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        // Another thread may have started one meanwhile.
        let note = match self.check_current(config, python) {
            Ok(server) => return Ok((server, None)),
            Err(note) => first.or(note),
        };
        let server = Server::start(config, python)?;
        if announce {
            server.announce();
        }
        server.prepare_spare();
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&server));
        Ok((server, note))
    }

    /// Starts (or refreshes) the server ahead of the first run. Blocking.
    pub(crate) fn warm(&self, config: &Config, python: &Path) -> Result<(), StartError> {
        self.server(config, python).map(|_| ())
    }

    /// `warm`, saying nothing (before the daemon's log is set up); `announce` says it later.
    pub(crate) fn warm_quietly(&self, config: &Config, python: &Path) -> Result<(), StartError> {
        self.get(config, python, false).map(|_| ())
    }

    /// Says that the current server is ready.
    pub(crate) fn announce(&self) {
        if let Some(server) = self.current() {
            server.announce();
        }
    }

    /// Replaces the server now (reload, SIGHUP): the next run forks from a fresh import of
    /// everything. Blocking.
    pub(crate) fn renew(
        &self,
        config: &Config,
        python: &Path,
        why: &str,
    ) -> Result<(), StartError> {
        let _one_start = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        let new = Server::start(config, python)?;
        new.announce();
        let old = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(new);
        if let Some(old) = old {
            old.retire(why.to_string());
        }
        Ok(())
    }

    /// Kills a server that did not answer, so the next run starts a new one.
    pub(crate) fn kill(&self, server: &Server, why: &str) {
        server.kill(why);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|s| s.pid == server.pid) {
            *current = None;
        }
    }

    /// Checks the server answers (the health check); a hung one is killed. Blocking.
    pub(crate) fn check(&self) -> Option<String> {
        let server = self.current()?;
        if server.dead().is_some() || !server.usable() {
            return None;
        }
        if server.ping(Duration::from_secs(2)) {
            return None;
        }
        let why = "did not answer a ping within 2 s";
        self.kill(&server, why);
        Some(format!(
            "fork server {} {why}: killed; the next run starts a new one",
            server.pid
        ))
    }

    /// The current server's PID, if one runs.
    pub fn pid(&self) -> Option<u32> {
        let current = self.current.lock().ok()?;
        current
            .as_ref()
            .filter(|s| s.dead().is_none())
            .map(|s| s.pid)
    }

    /// Has the current server fork a child ahead of the next run. Blocking.
    pub(crate) fn spare(&self) {
        if let Some(server) = self.current() {
            server.prepare_spare();
        }
    }

    /// Retires every server (the daemon stops).
    pub(crate) fn shutdown(&self) {
        if let Some(server) = self.current.lock().ok().and_then(|mut c| c.take()) {
            server.retire("the scheduler stops".to_string());
            // Gone before we are (reaped by its reader): under systemd, what is left of a
            // service once its main process exits is SIGKILLed.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while server.life.lock().is_ok_and(|l| l.dead.is_none())
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}
