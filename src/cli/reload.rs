//! `flashgate reload`: asks a running gateway to reload its configuration,
//! the way `nginx -s reload` and `systemctl reload` do — a SIGHUP to its PID.

use std::path::PathBuf;

use clap::Args;

/// The `reload` flags: which process.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ReloadArgs {
    /// The gateway's process id.
    #[arg(long)]
    pub pid: Option<u32>,
    /// A file holding the gateway's process id (as a service manager writes it).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
}

/// Why the signal was not sent.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read the PID file {path}: {source}")]
    PidFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the PID file {0} does not hold a process id")]
    BadPid(String),
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: u32, source: std::io::Error },
    #[error("sending signals needs a Unix system")]
    Unsupported,
}

/// Sends SIGHUP to the gateway; returns its PID. The gateway logs the
/// outcome and counts it in `flashgate_config_reloads_total`.
pub fn run(args: &ReloadArgs) -> Result<u32, ReloadError> {
    let pid = match (&args.pid, &args.pid_file) {
        (Some(pid), _) => *pid,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| ReloadError::PidFile {
                path: path.display().to_string(),
                source,
            })?;
            text.trim()
                .parse()
                .map_err(|_| ReloadError::BadPid(path.display().to_string()))?
        }
        (None, None) => unreachable!("clap requires --pid or --pid-file"),
    };
    hangup(pid)?;
    Ok(pid)
}

#[cfg(unix)]
fn hangup(pid: u32) -> Result<(), ReloadError> {
    let target = i32::try_from(pid).map_err(|_| ReloadError::Signal {
        pid,
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(target, libc::SIGHUP) } == 0 {
        Ok(())
    } else {
        Err(ReloadError::Signal {
            pid,
            source: std::io::Error::last_os_error(),
        })
    }
}

#[cfg(not(unix))]
fn hangup(_pid: u32) -> Result<(), ReloadError> {
    Err(ReloadError::Unsupported)
}
