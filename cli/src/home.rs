//! Where the store is, and how long to wait for its lock.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use codex_refresh::{AuthManager, RefreshConfig};
use codex_store::{Store, StoreOptions};

use crate::exit::Failure;

/// What every subcommand needs: the home directory and the lock wait.
pub struct Context {
    home: Option<PathBuf>,
    lock_timeout: Option<Duration>,
    reuse_wait: Option<Duration>,
    http_timeout: Option<Duration>,
    fleet: crate::options::FleetArgs,
}

impl Context {
    /// From the global options.
    pub fn new(
        home: Option<PathBuf>,
        lock_timeout: Option<Duration>,
        reuse_wait: Option<Duration>,
        fleet: crate::options::FleetArgs,
    ) -> Self {
        Context {
            home,
            lock_timeout,
            reuse_wait,
            http_timeout: None,
            fleet,
        }
    }

    /// With `--http-timeout`.
    pub fn with_http_timeout(mut self, http_timeout: Option<Duration>) -> Self {
        self.http_timeout = http_timeout;
        self
    }

    /// The fleet options.
    pub fn fleet_args(&self) -> &crate::options::FleetArgs {
        &self.fleet
    }

    /// `--home`, else `$CODEX_HOME`, else `~/.codex`. A home named by `--home` or `CODEX_HOME`
    /// must be an existing directory: a typo is refused, never created (only the default
    /// `~/.codex` is created when missing, by the commands that write).
    pub fn home(&self) -> Result<PathBuf, Failure> {
        if let Some(home) = &self.home {
            check_named_home(
                home,
                "--home",
                "create the directory, or pass the right --home",
            )?;
            return Ok(home.clone());
        }
        if let Some(env) = std::env::var_os("CODEX_HOME").filter(|v| !v.is_empty()) {
            let path = PathBuf::from(env);
            check_named_home(
                &path,
                "CODEX_HOME",
                "create the directory, or unset CODEX_HOME to use ~/.codex",
            )?;
            return Ok(path);
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => Ok(Path::new(&home).join(".codex")),
            None => Err(Failure::other(
                "neither --home, CODEX_HOME nor HOME is set",
                "pass --home DIR",
            )),
        }
    }

    /// The refresh configuration, with `--reuse-wait` applied.
    pub fn refresh_config(&self) -> RefreshConfig {
        let mut config = RefreshConfig::default();
        if let Some(wait) = self.reuse_wait {
            config.reuse_wait = wait;
        }
        if let Some(timeout) = self.http_timeout {
            config.http_timeout = timeout;
        }
        config
    }

    /// The store, telling stderr once when a lock wait lasts over a second.
    pub fn store(&self) -> Result<Store, Failure> {
        self.store_with_notice(true)
    }

    /// The store, without the lock-wait notice (for `agent`, whose stderr carries its events
    /// only, JSON lines with `--json`).
    pub fn quiet_store(&self) -> Result<Store, Failure> {
        self.store_with_notice(false)
    }

    fn store_with_notice(&self, notice: bool) -> Result<Store, Failure> {
        // The lock wait, resolved once: --lock-timeout, else CODEX_STORE_LOCK_TIMEOUT (a bad
        // value is a usage error), else the default.
        let from_env = StoreOptions::from_env().map_err(|e| Failure::usage(e.to_string()))?;
        let options = StoreOptions {
            lock_timeout: self.lock_timeout.unwrap_or(from_env.lock_timeout),
            on_wait: notice.then(|| -> codex_store::WaitNotice {
                Arc::new(|path: &Path, _waited: Duration| {
                    use std::io::Write;
                    // A closed stderr loses the notice, never the command.
                    let _ = writeln!(
                        std::io::stderr(),
                        "codex-store: waiting for another process that holds the lock {}",
                        crate::exit::escape_controls(&path.display().to_string())
                    );
                })
            }),
            ..from_env
        };
        Ok(Store::with_options(self.home()?, options)?)
    }

    /// A manager over the store.
    pub fn manager(&self) -> Result<AuthManager, Failure> {
        Ok(AuthManager::new(self.store()?, self.refresh_config())?)
    }

    /// A single-threaded runtime for one command.
    pub fn runtime(&self) -> Result<tokio::runtime::Runtime, Failure> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                Failure::other(
                    format!("cannot start the async runtime: {e}"),
                    "the system is out of threads or memory: check the process's limits",
                )
            })
    }
}

/// Refuses a home named by `setting` (`--home`, `CODEX_HOME`) that is not an existing directory
/// (exit 1), so that nothing is created at a mistyped path. The path is shown quoted and
/// escaped.
fn check_named_home(path: &Path, setting: &str, hint: &'static str) -> Result<(), Failure> {
    let problem = match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => "which is not a directory".to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "which is not an existing directory".to_owned()
        }
        // ENOTDIR (a component is a file), EACCES, ...: not a directory this user can use.
        Err(e) => format!("which is not an existing directory ({e})"),
    };
    Err(Failure::other(
        format!("{setting} is {path:?}, {problem}; nothing was created"),
        hint,
    ))
}
