//! `punchscope dataset publish` on the committed lab sample: the committed release is made again byte for byte, its checksums hold, the input's order does not matter, datasets/README's pandas lines load it, and `report` reads and compares releases.
//!
//! The Python test needs pandas (`.ci/run` installs Debian's python3-pandas); it fails, naming
//! the package, when pandas is missing. `PUNCHSCOPE_BLESS_RELEASE=1`
//! rewrites the committed release (after a deliberate change of the report
//! or of the compressor).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

const SAMPLE: &str = "datasets/lab-campaign-2026-11-21/results.jsonl";
const RELEASE: &str = "datasets/lab-campaign-2026-11-21-release";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs punchscope from the repository's root, as the release's README records.
fn punchscope(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_punchscope"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("run punchscope");
    assert!(
        output.status.success(),
        "punchscope {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn publish(inputs: &[&str], out: &Path, extra: &[&str]) {
    let mut args = vec!["dataset", "publish"];
    args.extend_from_slice(inputs);
    args.extend_from_slice(&[
        "--campaign",
        "lab-campaign-2026-11-21",
        "--min-group-trials",
        "6",
        "--out",
        out.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    punchscope(&args);
}

/// Every file under `dir`, by relative path.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let name = path.strip_prefix(base).unwrap().display().to_string();
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn the_committed_release_is_made_again_byte_for_byte() {
    let committed = root().join(RELEASE);
    if std::env::var_os("PUNCHSCOPE_BLESS_RELEASE").is_some() {
        publish(&[SAMPLE], &committed, &["--replace"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let second = dir.path().join("second");
    publish(&[SAMPLE], &first, &[]);
    publish(&[SAMPLE], &second, &[]);
    let made = files(&first);
    assert_eq!(made, files(&second), "two runs of the command differ");
    let kept = files(&committed);
    assert_eq!(
        made.keys().collect::<Vec<_>>(),
        kept.keys().collect::<Vec<_>>(),
        "the files of the release"
    );
    for (name, bytes) in &made {
        assert!(
            kept[name] == *bytes,
            "{RELEASE}/{name} differs from what the command makes now; if the change is deliberate, \
             rewrite it with PUNCHSCOPE_BLESS_RELEASE=1 cargo test --test dataset_release"
        );
    }
    // A release in place is not overwritten without --replace.
    let again = Command::new(env!("CARGO_BIN_EXE_punchscope"))
        .current_dir(root())
        .args(["dataset", "publish", SAMPLE, "--campaign", "x", "--out"])
        .arg(&first)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--replace"));
}

#[test]
fn the_committed_releases_checksums_hold() {
    let dir = root().join(RELEASE);
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let mut listed = Vec::new();
    for line in sums.lines() {
        let (hex, name) = line.split_once("  ").expect("sha256sum format: HEX  NAME");
        let bytes = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(sha256_hex(&bytes), hex, "{name}");
        listed.push(name.to_string());
    }
    // Every file but SHA256SUMS itself is listed, in order.
    let mut all: Vec<String> = files(&dir)
        .into_keys()
        .filter(|n| n != "SHA256SUMS")
        .collect();
    all.sort();
    assert_eq!(listed, all);
    // And the README records the command that made it.
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.contains(&format!(
        "punchscope dataset publish {SAMPLE} --campaign lab-campaign-2026-11-21 --min-group-trials 6"
    )));
    assert!(readme.contains("`source_net`"), "says what was removed");
    assert!(
        !readme.contains("203.0.113.0/24"),
        "no source prefix in the README"
    );
}

#[test]
fn the_order_of_the_inputs_changes_no_data() {
    // The sample split in two files, given in reverse order, with one run twice.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join(SAMPLE)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (head, tail) = lines.split_at(5);
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    std::fs::write(&a, head.join("\n") + "\n").unwrap();
    std::fs::write(&b, format!("{}\n{}\n", tail.join("\n"), head[0])).unwrap();
    let out = dir.path().join("release");
    publish(&[b.to_str().unwrap(), a.to_str().unwrap()], &out, &[]);
    let committed = files(&root().join(RELEASE));
    let made = files(&out);
    for name in [
        "results.jsonl.gz",
        "trials.csv",
        "pairs.csv",
        "schema/run-result.v1.json",
    ] {
        assert!(
            made[name] == committed[name],
            "{name} depends on the input order"
        );
    }
    let readme = String::from_utf8(made["README.md"].clone()).unwrap();
    assert!(readme.contains("1 duplicate copies of a run"), "{readme}");
}

/// The code of a marked block of datasets/README.md (`<!-- NAME:begin` ...
/// `<!-- NAME:end -->`), fenced as `lang`.
fn readme_block(name: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(root().join("datasets/README.md")).unwrap();
    let block = readme
        .split(&format!("<!-- {name}:begin"))
        .nth(1)
        .and_then(|rest| rest.split(&format!("<!-- {name}:end -->")).next())
        .unwrap_or_else(|| panic!("the {name} block in datasets/README.md"));
    block
        .lines()
        .skip_while(|l| *l != format!("```{lang}"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Runs `program args... code` from the repository's root and checks that it
/// printed runs, trials, successes and pairings as the release's summary.json says.
fn check_loading_lines(program: &str, args: &[&str], code: &str) {
    let output = Command::new(program)
        .current_dir(root())
        .args(args)
        .arg(code)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join(RELEASE).join("summary.json")).unwrap(),
    )
    .unwrap();
    let expected = format!(
        "{} {} {} {}",
        summary["input"]["runs"],
        summary["headline"]["n"],
        summary["headline"]["successes"],
        summary["uncertainty"]["pairings"]
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), expected);
    assert_eq!(expected, "12 42 34 7");
}

#[test]
fn the_python_lines_of_datasets_readme_load_the_release() {
    let python = support::python::python_with("pandas").expect(
        "python3 with pandas is needed to check datasets/README.md's loading lines: \
         apt-get install python3-pandas (.ci/run does) or python3 -m pip install pandas",
    );
    let code = readme_block("python-load", "python");
    assert!(
        code.contains("read_json") && code.contains("read_csv"),
        "{code}"
    );
    check_loading_lines(python, &["-c"], &code);
}

#[test]
fn the_r_lines_of_datasets_readme_load_the_release() {
    let has_r = Command::new("Rscript")
        .args(["-e", "library(jsonlite)"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_r,
        "Rscript with jsonlite is needed to check datasets/README.md's R lines: \
         apt-get install r-base-core r-cran-jsonlite (.ci/run does)"
    );
    let code = readme_block("r-load", "r");
    assert!(
        code.contains("stream_in") && code.contains("read.csv"),
        "{code}"
    );
    check_loading_lines("Rscript", &["-e"], &code);
}

#[test]
fn report_reads_a_release_and_compares_two() {
    let dir = tempfile::tempdir().unwrap();
    // A release as an input: its results, not its summary or schema.
    let out: PathBuf = dir.path().join("report");
    punchscope(&["report", RELEASE, "--out", out.to_str().unwrap()]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["skipped_lines"]["total"], 0);
    assert_eq!(summary["headline"]["n"], 42);
    assert_eq!(
        summary["uncertainty"]["keyed_networks"], 9,
        "groups kept in the release"
    );

    // Two releases side by side: the sample, and the sample without one volunteer pair.
    let text = std::fs::read_to_string(root().join(SAMPLE)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let smaller = dir.path().join("smaller.jsonl");
    std::fs::write(&smaller, lines[2..].join("\n") + "\n").unwrap();
    let b = dir.path().join("b");
    publish(&[smaller.to_str().unwrap()], &b, &[]);
    let cmp = dir.path().join("cmp");
    let output = punchscope(&[
        "report",
        "--compare",
        RELEASE,
        b.to_str().unwrap(),
        "--out",
        cmp.to_str().unwrap(),
    ]);
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cmp.join("comparison.json")).unwrap())
            .unwrap();
    assert_eq!(c["counts"][0], serde_json::json!(["runs", 12, 10]));
    let headline = &c["rates"][0];
    assert_eq!(headline["a"]["n"], 42);
    let (a_rate, b_rate) = (
        headline["a"]["rate"].as_f64().unwrap(),
        headline["b"]["rate"].as_f64().unwrap(),
    );
    assert!((headline["difference"].as_f64().unwrap() - (b_rate - a_rate)).abs() < 1e-12);
    assert!(headline["low"].as_f64().unwrap() <= headline["high"].as_f64().unwrap());
    for f in ["index.html", "a/index.html", "b/summary.json"] {
        assert!(cmp.join(f).is_file(), "{f}");
    }
    let page = std::fs::read_to_string(cmp.join("index.html")).unwrap();
    assert!(page.contains("<section id=rates>") && !page.contains("NaN"));
    assert!(String::from_utf8_lossy(&output.stdout).contains("headline all trials"));
}
