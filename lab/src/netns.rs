//! Named network namespaces (`ip netns`), and running code or commands inside them.
//!
//! A thread that calls `setns` moves into a namespace alone; sockets and TUN
//! devices it creates stay in that namespace whichever thread uses them later.
//! That is how the lab, its tests and `lab exec` work without containers.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where `ip netns` keeps the bind mounts that name namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A failure to create, configure or enter a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "`{command}` failed: {detail} (the lab needs root, iproute2, and for kernel routers nftables and conntrack: apt-get install iproute2 nftables conntrack)"
    )]
    Command { command: String, detail: String },
    #[error("cannot enter network namespace {name}: {source}")]
    Enter { name: String, source: io::Error },
    #[error("cannot set {key} in namespace {name}: {source}")]
    Sysctl {
        name: String,
        key: String,
        source: io::Error,
    },
}

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// The names of all named namespaces.
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn exists(name: &str) -> bool {
    netns_path(name).exists()
}

fn ip(args: &[&str], stdin: Option<&str>) -> Result<(), NetnsError> {
    let command = format!("ip {}", args.join(" "));
    let mut child = Command::new("ip")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetnsError::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .map_err(|e| NetnsError::Command {
                command: command.clone(),
                detail: e.to_string(),
            })?;
    }
    let output = child.wait_with_output().map_err(|e| NetnsError::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Command {
            command,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Creates a named namespace.
pub fn add(name: &str) -> Result<(), NetnsError> {
    ip(&["netns", "add", name], None)
}

/// Deletes a named namespace; devices in it go with it once nothing holds it.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    ip(&["netns", "delete", name], None)
}

/// Runs `ip` commands (one per line, without the leading `ip`) inside a namespace.
pub fn ip_batch(name: &str, commands: &[String]) -> Result<(), NetnsError> {
    ip(&["-n", name, "-batch", "-"], Some(&commands.join("\n")))
}

/// Runs `program ARGS` inside a namespace with `input` on its standard input
/// (e.g. `nft -f -`); its standard error is the error's detail.
pub fn run_with_input(
    name: &str,
    program: &str,
    args: &[&str],
    input: &str,
) -> Result<(), NetnsError> {
    let label = format!("{program} {} (in {name})", args.join(" "));
    let failed = |detail: String| NetnsError::Command {
        command: label.clone(),
        detail,
    };
    let mut child = command_in(name, program)?
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .map_err(|e| failed(e.to_string()))?;
    let output = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

/// Moves the calling thread into the namespace.
fn enter(name: &str) -> Result<(), NetnsError> {
    let enter_error = |source| NetnsError::Enter {
        name: name.to_string(),
        source,
    };
    let file = File::open(netns_path(name)).map_err(enter_error)?;
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(enter_error(io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside the namespace and returns its result.
///
/// A panic in `f` is resumed on the calling thread.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            enter(name)?;
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Spawns a long-lived thread inside the namespace.
pub fn spawn_in<T, F>(name: &str, f: F) -> std::thread::JoinHandle<Result<T, NetnsError>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let name = name.to_string();
    std::thread::spawn(move || {
        enter(&name)?;
        Ok(f())
    })
}

/// Writes sysctls under /proc/sys/net of the namespace (e.g. `ipv4/ip_forward`).
pub fn set_sysctls(name: &str, settings: &[(&str, &str)]) -> Result<(), NetnsError> {
    run_in(name, || {
        for (key, value) in settings {
            let path = Path::new("/proc/sys/net").join(key);
            std::fs::write(&path, value).map_err(|source| NetnsError::Sysctl {
                name: name.to_string(),
                key: key.to_string(),
                source,
            })?;
        }
        Ok(())
    })?
}

/// A command that will run inside the namespace.
pub fn command_in(name: &str, program: &str) -> Result<Command, NetnsError> {
    let file = File::open(netns_path(name)).map_err(|source| NetnsError::Enter {
        name: name.to_string(),
        source,
    })?;
    let mut command = Command::new(program);
    // SAFETY: between fork and exec only async-signal-safe calls: setns is a plain syscall.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command)
}
