//! Servers run as child processes of a test: started, waited for, SIGKILLed by PID, and always reaped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process that is killed and reaped however the test ends.
pub struct Guard(pub Option<Child>);

impl Guard {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child running")
    }

    /// SIGKILL by PID, then reap.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let pid = libc::pid_t::try_from(child.id()).unwrap();
            // SAFETY: kill has no memory preconditions; the PID is our unreaped child.
            let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
            assert_eq!(rc, 0, "kill failed");
            child.wait().unwrap();
        }
    }

    /// Waits for the child to exit by itself, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child().try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "child did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `punchscope serve collector` on 127.0.0.1:`port` as a child process,
/// its grouping key at `key` (apart from the database), once `/healthz` answers.
pub fn start_collector(port: u16, db: &Path, key: &Path) -> Guard {
    start_collector_with(port, db, key, &[])
}

/// As [`start_collector`], with more command-line arguments.
pub fn start_collector_with(port: u16, db: &Path, key: &Path, extra: &[&str]) -> Guard {
    let child = Command::new(env!("CARGO_BIN_EXE_punchscope"))
        .args(["serve", "collector", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--db")
        .arg(db)
        .arg("--key-file")
        .arg(key)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(Some(child));
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = agent
            .get(&format!("http://127.0.0.1:{port}/healthz"))
            .call()
        {
            if r.status() == 200 {
                return guard;
            }
        }
        assert!(
            guard.child().try_wait().unwrap().is_none(),
            "collector exited at start"
        );
        assert!(Instant::now() < deadline, "collector did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}
