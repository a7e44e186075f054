//! A throwaway PostgreSQL cluster for the tests of the PostgreSQL backend: started at the
//! first use in a test process, in a fresh temporary directory, on 127.0.0.1 only, with
//! Debian's server binaries (as the `postgres` user when the tests run as root, since
//! PostgreSQL refuses to run as root). Each caller gets its own empty database.
//!
//! Cleanup does not depend on the test process ending well: a detached watchdog started
//! with the cluster stops it and removes its directory once the test process is gone
//! (passed, failed, panicked or killed), and a start removes the clusters of earlier runs
//! whose watchdog was killed too. The cluster keeps PostgreSQL's durable defaults (`fsync`
//! and `synchronous_commit` on), so the tests see the costs a deployment would.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Cluster directories are `<temp dir>/palo-pg-test-<random>`.
const PREFIX: &str = "palo-pg-test-";
/// In a cluster directory: `<pid> <start time>` of the test process that owns it.
const OWNER_FILE: &str = "owner";
/// What to do when the server binaries are missing.
const INSTALL: &str = "install Debian's PostgreSQL server package as root: \
    `apt-get install postgresql` (.ci/run does it when initdb is missing)";
/// Attempts at starting on a free port: another process may take the port between the
/// moment it is found free and the moment the postmaster binds it.
const PORT_ATTEMPTS: usize = 5;

/// The running cluster of this test process.
struct Cluster {
    tools: Tools,
    dir: PathBuf,
    port: u16,
}

/// Where the binaries are, and whether the server ones run as `postgres`.
struct Tools {
    bin: PathBuf,
    as_postgres: bool,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static DATABASES: AtomicU64 = AtomicU64::new(0);

/// Creates a new empty database (`t_<pid>_<n>`) in this process's test cluster, starting
/// the cluster at the first call, and returns its URL,
/// `postgres://postgres@127.0.0.1:<port>/<name>` (trust authentication, no password).
///
/// Panics when the cluster cannot start, saying how to install PostgreSQL when its binaries
/// are missing: the tests of the PostgreSQL backend never skip.
pub fn pg_database() -> String {
    let cluster = CLUSTER.get_or_init(Cluster::start);
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    let admin = cluster.url("postgres");
    if let Err(error) = psql(&admin, &format!("CREATE DATABASE {name}")) {
        panic!("CREATE DATABASE {name} failed: {error}");
    }
    cluster.url(&name)
}

/// Drops the database at `url` (made by [`pg_database`]), ending its open connections.
///
/// # Errors
/// psql's error text.
pub fn pg_drop_database(url: &str) -> Result<(), String> {
    let cluster = CLUSTER.get().expect("no test cluster was started");
    let name = url.rsplit('/').next().expect("a database URL");
    psql(
        &cluster.url("postgres"),
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .map(drop)
}

/// Runs `sql` with `psql` on the database at `url` (of the test cluster, started by then):
/// its unaligned, tuples-only output. Runs as the current user: clients, unlike the server,
/// may be root.
///
/// # Errors
/// psql's error text (a failed connection, a failed statement).
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let cluster = CLUSTER.get().expect("no test cluster was started");
    let output = hermetic(Command::new(cluster.tools.bin.join("psql")))
        // No ~/.psqlrc; bare values, one row a line; stop at the first error.
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-d", url, "-c", sql])
        .output()
        .expect("run psql");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(text(&output))
    }
}

impl Cluster {
    fn start() -> Cluster {
        let tools = Tools::find();
        remove_leftover_clusters();
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir()
            .expect("temporary directory for the test cluster")
            .keep();
        std::fs::write(dir.join(OWNER_FILE), owner_line()).expect("write the owner file");
        if tools.as_postgres {
            run(Command::new("chown").args(["postgres:postgres"]).arg(&dir));
        }
        // Before anything can be left behind: the watchdog removes the directory even if
        // this process dies during initdb.
        spawn_watchdog(&tools, &dir);
        let data = dir.join("data");
        run(tools
            .server(&dir, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust"])
            .args(["--no-locale", "--encoding=UTF8"])
            // Only initdb's final flush of the new files: the server keeps fsync on.
            .arg("--no-sync"));
        let settings = format!(
            "\n# palo-webhooks tests\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nmax_connections = 500\n",
            dir.display()
        );
        append(&data.join("postgresql.conf"), &settings);
        let port = start_on_a_free_port(&tools, &dir);
        let cluster = Cluster { tools, dir, port };
        cluster.wait_until_ready();
        cluster
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// `pg_ctl -w` waits for the postmaster; this waits for TCP connections on the port.
    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = hermetic(Command::new(self.tools.bin.join("pg_isready")))
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
                .args(["-p", &self.port.to_string()])
                .status()
                .expect("run pg_isready");
            if ready.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster in {} accepts no connection after 30 s; its log:\n{}",
                self.dir.display(),
                log_tail(&self.dir)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Tools {
    /// The newest `/usr/lib/postgresql/<version>/bin` holding initdb and pg_ctl.
    fn find() -> Tools {
        let versions = std::fs::read_dir("/usr/lib/postgresql")
            .map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        let newest = versions
            .into_iter()
            .filter_map(|path| {
                let version: u32 = path.file_name()?.to_str()?.parse().ok()?;
                let bin = path.join("bin");
                let complete = ["initdb", "pg_ctl", "postgres", "psql", "pg_isready"]
                    .iter()
                    .all(|tool| bin.join(tool).is_file());
                complete.then_some((version, bin))
            })
            .max();
        let Some((_, bin)) = newest else {
            panic!(
                "the tests of the PostgreSQL backend need PostgreSQL's server binaries (no \
                 /usr/lib/postgresql/<version>/bin/initdb with pg_ctl, postgres, psql and \
                 pg_isready): {INSTALL}"
            );
        };
        let as_postgres = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if as_postgres {
            let user = Command::new("id").args(["-u", "postgres"]).output();
            assert!(
                user.is_ok_and(|o| o.status.success()),
                "the tests run as root, and PostgreSQL refuses root: they run it as the \
                 `postgres` user, which does not exist; {INSTALL}"
            );
        }
        Tools { bin, as_postgres }
    }

    /// A server binary, run as `postgres` when this process is root, from `dir` (a working
    /// directory `postgres` can read: initdb fails in one it cannot).
    fn server(&self, dir: &Path, tool: &str) -> Command {
        let argv = self.server_argv(tool);
        let mut command = hermetic(Command::new(&argv[0]));
        command.args(&argv[1..]).current_dir(dir);
        command
    }

    /// The argument vector that runs `tool` as the right user.
    fn server_argv(&self, tool: &str) -> Vec<String> {
        let path = self.bin.join(tool).to_str().expect("UTF-8 path").to_owned();
        if self.as_postgres {
            ["runuser", "-u", "postgres", "--", &path]
                .map(String::from)
                .to_vec()
        } else {
            vec![path]
        }
    }
}

/// Starts the postmaster on a port that was free a moment ago; tries another when it was
/// taken meanwhile. Returns the port.
fn start_on_a_free_port(tools: &Tools, dir: &Path) -> u16 {
    let mut failures = Vec::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("find a free port")
            .port();
        let output = tools
            .server(dir, "pg_ctl")
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-l")
            .arg(dir.join("postgres.log"))
            // pg_ctl starts the postmaster in a session of its own: a Ctrl-C meant for the
            // tests does not reach it, and the watchdog stops it once the tests are gone.
            .args(["-w", "-t", "60", "-o", &format!("-p {port}"), "start"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl");
        if output.status.success() {
            return port;
        }
        failures.push(format!("port {port}: {}", text(&output)));
    }
    panic!(
        "the test cluster in {} did not start in {PORT_ATTEMPTS} attempts: {failures:?}; its \
         log:\n{}",
        dir.display(),
        log_tail(dir)
    );
}

/// A shell in its own process group that waits for this process to end (however it
/// ends), then stops the cluster in `dir` at once and removes `dir`.
fn spawn_watchdog(tools: &Tools, dir: &Path) {
    const SCRIPT: &str = r#"owner=$1; dir=$2; shift 2
while kill -0 "$owner" 2>/dev/null; do sleep 1; done
if [ -e "$dir/data/postmaster.pid" ]; then "$@"; fi
rm -rf "$dir""#;
    let data = dir.join("data");
    let mut stop = tools.server_argv("pg_ctl");
    stop.extend(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"].map(String::from));
    let spawned = Command::new("sh")
        .args(["-c", SCRIPT, "palo-pg-test-watchdog"])
        .arg(std::process::id().to_string())
        .arg(dir)
        .args(stop)
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    // Never waited for: it outlives this process by design.
    drop(spawned.expect("spawn the test cluster's watchdog"));
}

/// Removes the cluster directories of earlier runs whose owner is gone (its watchdog was
/// killed with it), stopping their postmaster first. Directories of live runs stay.
fn remove_leftover_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let ours = entry.file_name().to_string_lossy().starts_with(PREFIX);
        if !ours || !entry.file_type().is_ok_and(|t| t.is_dir()) || owner_alive(&dir) {
            continue;
        }
        stop_postmaster(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Whether the test process that made `dir` still runs. A directory without its owner file
/// is a run writing it right now, unless it is more than a minute old.
fn owner_alive(dir: &Path) -> bool {
    let Ok(line) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
        let modified = std::fs::metadata(dir).and_then(|m| m.modified());
        return modified.is_ok_and(|at| {
            SystemTime::now()
                .duration_since(at)
                .is_ok_and(|age| age < Duration::from_secs(60))
        });
    };
    let mut fields = line.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(pid)), Some(Ok(started))) => process_start_time(pid) == Some(started),
        _ => false,
    }
}

/// `<pid> <start time>` of this process: the start time tells a reused pid apart.
fn owner_line() -> String {
    let pid = std::process::id();
    let started = process_start_time(u64::from(pid)).expect("this process's /proc entry");
    format!("{pid} {started}\n")
}

/// A process's start time in clock ticks after boot (field 22 of `/proc/<pid>/stat`).
fn process_start_time(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Stops the postmaster of a leftover cluster in `dir` at once (SIGQUIT), if one runs: the
/// pid in its `postmaster.pid` counts only while that process runs on this data directory.
fn stop_postmaster(dir: &Path) {
    let data = dir.join("data");
    let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
    else {
        return;
    };
    let runs_here = || {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            let needle = data.to_string_lossy();
            String::from_utf8_lossy(&cmdline).contains(needle.as_ref())
        })
    };
    if !runs_here() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs_here() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// No `PG*` variable of the caller's environment (PGHOST, PGPASSWORD, PGSERVICE, ...)
/// reaches the PostgreSQL tools: the tests talk to their own cluster only.
fn hermetic(mut command: Command) -> Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `command`; panics with its output when it fails.
fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        text(&output)
    );
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The last lines of the cluster's server log, for failure messages.
fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
