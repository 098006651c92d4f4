//! A throwaway PostgreSQL server for the cluster tests: one per test binary, on a Unix socket in
//! a temp dir (nothing on the network), one database per test. Started from Debian's packages
//! (`initdb`, `pg_ctl`), as the `postgres` user when the tests run as root.
//!
//! Without the server binaries the cluster tests are skipped with a message, except under
//! `CI=true`, where a missing PostgreSQL is a failure.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Server {
    /// Keeps the folder for as long as the test binary runs.
    _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub socket: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

static SERVER: OnceLock<Option<Server>> = OnceLock::new();
/// Tests that stop or restart the server hold it exclusively; the others share it.
static USE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A test's hold on the server.
pub enum Hold {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

/// The server, shared with other tests running meanwhile.
pub fn shared() -> Option<(&'static Server, Hold)> {
    let s = server_or_skip()?;
    Some((
        s,
        Hold::Shared(USE.read().unwrap_or_else(|e| e.into_inner())),
    ))
}

/// The server, for a test that stops or restarts it: no other cluster test runs meanwhile.
pub fn exclusive() -> Option<(&'static Server, Hold)> {
    let s = server_or_skip()?;
    Some((
        s,
        Hold::Exclusive(USE.write().unwrap_or_else(|e| e.into_inner())),
    ))
}
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// The server binaries' folder: `pg_config --bindir`, else the newest Debian layout.
fn bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return Some(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// [`server`], or `None` after the test is marked skipped (a failure under `CI=true`).
fn server_or_skip() -> Option<&'static Server> {
    let s = server();
    if s.is_none() {
        crate::skip::skip(
            "PostgreSQL's server is not installed",
            "Debian package `postgresql`",
        );
    }
    s
}

/// The server, started on first use; `None` when PostgreSQL is not installed.
pub fn server() -> Option<&'static Server> {
    SERVER.get_or_init(|| bindir().map(Server::start)).as_ref()
}

extern "C" fn stop_at_exit() {
    if let Some(Some(s)) = SERVER.get() {
        let _ = s
            .pg(&["pg_ctl", "-D"])
            .arg(&s.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

impl Server {
    fn start(bin: PathBuf) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("hedge-pg-")
            .tempdir()
            .expect("temp dir");
        let as_postgres = nix::unistd::Uid::effective().is_root();
        let data = dir.path().join("data");
        let socket = dir.path().join("sock");
        std::fs::create_dir(&socket).expect("socket dir");
        if as_postgres {
            let pg = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("the `postgres` user (made by Debian's postgresql package)");
            for p in [dir.path(), socket.as_path()] {
                nix::unistd::chown(p, Some(pg.uid), Some(pg.gid)).expect("chown to postgres");
            }
        }
        let s = Server {
            data,
            socket,
            bin,
            as_postgres,
            _dir: dir,
        };
        s.initdb();
        s.start_again();
        unsafe extern "C" {
            fn atexit(f: extern "C" fn()) -> i32;
        }
        // SAFETY: registers a plain function to run at exit.
        unsafe {
            atexit(stop_at_exit);
        }
        s
    }

    /// A server command (`initdb`, `pg_ctl`, …), as `postgres` when we are root.
    pub fn pg(&self, argv: &[&str]) -> Command {
        let prog = self.bin.join(argv[0]);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(prog);
            c
        } else {
            Command::new(prog)
        };
        cmd.args(&argv[1..]);
        cmd
    }

    /// A new cluster in its data folder (trust, no locale, UTF-8).
    fn initdb(&self) {
        let out = self
            .pg(&["initdb", "-D"])
            .arg(&self.data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
            ])
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb: {}", crate::util::text(&out));
    }

    /// `pg_ctl stop -m immediate`: the database is down.
    pub fn stop(&self) {
        let out = self
            .pg(&["pg_ctl", "-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .expect("pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            crate::util::text(&out)
        );
    }

    /// Starts the server (again, after `stop`). fsync off (the machine does not crash under a
    /// test), but every commit written before it is acknowledged: `pg_ctl stop -m immediate` must
    /// not lose acknowledged rows.
    pub fn start_again(&self) {
        let opts = format!(
            "-c listen_addresses='' -k {} -c fsync=off -c full_page_writes=off -c max_connections=300",
            self.socket.display()
        );
        let out = self
            .pg(&["pg_ctl", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.parent().expect("parent").join("server.log"))
            .args(["-w", "-o", &opts, "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            crate::util::text(&out)
        );
    }

    fn conninfo(&self, db: &str) -> String {
        format!("host={} user=postgres dbname={db}", self.socket.display())
    }

    /// A new, empty database for one test.
    pub fn database(&'static self) -> Db {
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        );
        let admin = Db {
            server: self,
            name: "postgres".to_string(),
        };
        admin.execute(&format!("CREATE DATABASE {name}"));
        Db { server: self, name }
    }
}

/// One test's database.
pub struct Db {
    pub server: &'static Server,
    pub name: String,
}

impl Db {
    /// The connection string the nodes use.
    pub fn conninfo(&self) -> String {
        self.server.conninfo(&self.name)
    }

    fn with_client<T>(&self, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&self.conninfo(), tokio_postgres::NoTls)
                .await
                .expect("connect to the test database");
            tokio::spawn(conn);
            f(&client).await
        })
    }

    pub fn execute(&self, sql: &str) {
        self.with_client(async |c| c.batch_execute(sql).await.expect(sql));
    }

    /// Rows of a query, every column read as text (`NULL` as `None`).
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.with_client(async |c| {
            let rows = c.simple_query(sql).await.expect(sql);
            rows.into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect()
        })
    }

    /// One number from a query.
    pub fn count(&self, sql: &str) -> i64 {
        self.query(sql)
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number from {sql}"))
    }
}

/// A server of its own that takes only TLS connections, on a loopback TCP port, with a
/// certificate (`localhost`, `127.0.0.1`) signed by a throwaway CA; stopped when dropped.
pub struct TlsServer {
    server: Server,
    pub port: u16,
    /// The CA's certificate (PEM), for `[cluster] ca_file`.
    pub ca: PathBuf,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self
            .server
            .pg(&["pg_ctl", "-D"])
            .arg(&self.server.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

impl TlsServer {
    /// Starts it (with the shared server's binaries), with one database `t`.
    pub fn start(shared: &Server) -> TlsServer {
        let dir = tempfile::Builder::new()
            .prefix("hedge-pg-tls-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let socket = dir.path().join("sock");
        std::fs::create_dir(&socket).expect("socket dir");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                crate::util::text(&out)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=hedge test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.path().join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("san.ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let as_postgres = shared.as_postgres;
        if as_postgres {
            let pg = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("the `postgres` user");
            for p in [
                dir.path().to_path_buf(),
                socket.clone(),
                dir.path().join("server.key"),
                dir.path().join("server.pem"),
            ] {
                nix::unistd::chown(&p, Some(pg.uid), Some(pg.gid)).expect("chown");
            }
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        let server = Server {
            data,
            socket,
            bin: shared.bin.clone(),
            as_postgres,
            _dir: dir,
        };
        server.initdb();
        // TCP only with TLS; the Unix socket for the test's own setup.
        std::fs::write(
            server.data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .expect("pg_hba.conf");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let base = server._dir.path().to_path_buf();
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -k {} -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c fsync=off",
            server.socket.display(),
            base.join("server.pem").display(),
            base.join("server.key").display()
        );
        let out = server
            .pg(&["pg_ctl", "-D"])
            .arg(&server.data)
            .arg("-l")
            .arg(base.join("server.log"))
            .args(["-w", "-o", &opts, "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            crate::util::text(&out),
            std::fs::read_to_string(base.join("server.log")).unwrap_or_default()
        );
        let out = Command::new("psql")
            .args(["-h"])
            .arg(&server.socket)
            .args([
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-q",
                "-c",
                "CREATE DATABASE t",
            ])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql: {}", crate::util::text(&out));
        TlsServer {
            ca: base.join("ca.pem"),
            server,
            port,
        }
    }
}
