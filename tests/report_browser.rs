//! The report page in a real browser: headless Chromium renders index.html (a synthetic campaign, as a collector export) to a screenshot with no console errors.
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`); the test fails,
//! rather than skips, without it, so CI cannot pass without looking.
//! Set `PUNCHSCOPE_KEEP_SCREENSHOT=DIR` to keep the screenshot and report.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs chromium with `args` on `url`, killed after `limit`; returns (stdout, stderr).
fn chromium(profile: &Path, args: &[&str], url: &str, limit: Duration) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start chromium");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = std::fs::read_to_string(&out_path).unwrap_or_default();
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            assert!(status.success(), "chromium failed ({status}): {err}");
            return (out, err);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {limit:?}: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG"
    );
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn the_report_renders_in_headless_chromium_without_console_errors() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install the Debian package `chromium` (apt-get install -y chromium); \
         this test checks that the report renders in a real browser"
    );
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("campaign.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&jsonl).unwrap());
    // Dual-stack: the page has its family columns and the IPv4/IPv6 comparison.
    support::synthetic::write_synthetic_campaign(&mut file, 300, 20, 7, true);
    drop(file);
    let out = match std::env::var_os("PUNCHSCOPE_KEEP_SCREENSHOT") {
        Some(keep) => Path::new(&keep).to_path_buf(),
        None => dir.path().join("report"),
    };
    let output = Command::new(env!("CARGO_BIN_EXE_punchscope"))
        .args([
            "report",
            jsonl.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let index = out.join("index.html").canonicalize().unwrap();
    let url = format!("file://{}", index.display());
    let limit = Duration::from_secs(90);

    let screenshot = out.join("screenshot.png");
    let profile = tempfile::tempdir().unwrap();
    let (_, log) = chromium(
        profile.path(),
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1200,3000",
            "--enable-logging=stderr",
            "--v=0",
        ],
        &url,
        limit,
    );
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert_eq!(png_size(&png), (1200, 3000));
    assert!(
        png.len() > 60_000,
        "a {} byte screenshot is too small to hold the page's tables and charts",
        png.len()
    );
    // Console messages and failed loads of the page (not the browser's own
    // noise about D-Bus or GPUs) are what we look for.
    let page_errors: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("CONSOLE")
                || l.contains("Uncaught")
                || l.contains("Failed to load resource")
                || l.contains("net::ERR_")
        })
        .collect();
    assert!(page_errors.is_empty(), "console errors: {page_errors:#?}");

    // The DOM as the browser parsed it: every chart is an SVG element there.
    let profile = tempfile::tempdir().unwrap();
    let (dom, _) = chromium(profile.path(), &["--dump-dom"], &url, limit);
    // Six charts, and the per-network histogram (the synthetic campaign is a collector export).
    assert_eq!(dom.matches("<svg").count(), 7, "seven charts in the DOM");
    for id in [
        "nat-matrix",
        "pairings",
        "networks",
        "groups",
        "uncertainty",
        "families",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "the {id} section");
    }
    assert!(dom.contains("class=\"matrix\""));
    assert!(dom.contains("<th>IP family</th>"), "tables split by family");
    assert!(
        dom.contains("IPv6 − IPv4 (points)"),
        "the paired IPv4/IPv6 table, not the note that there is none"
    );
}
