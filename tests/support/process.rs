//! Child processes of a test (servers, probes, uploads): killed by their
//! own PID and always reaped, however the test ends.

use std::process::Child;
use std::time::{Duration, Instant};

/// A child process that is killed and reaped when dropped, even on panic.
/// `None` once the test has taken the child (to wait for its output).
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Starts `command` with no input and both outputs piped (for
    /// `wait_with_output` or a reader), guarded.
    pub fn spawn_piped(command: &mut std::process::Command) -> ChildGuard {
        use std::process::Stdio;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the child starts");
        ChildGuard(Some(child))
    }

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

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
