//! A Python 3 interpreter that has a given module: `python3` on PATH first
//! (a pyenv or virtualenv the developer chose), then Debian's
//! `/usr/bin/python3` (where `.ci/run` installs python3-pandas).

use std::process::Command;

/// The first interpreter that imports `module`, or `None`.
pub fn python_with(module: &str) -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success())
    })
}
