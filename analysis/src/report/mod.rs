//! `punchscope report`: results in, a self-contained HTML report with CSV and JSON summaries out.
//!
//! Flow: [`input`] streams result files, JSONL files and directories (or any
//! reader, such as the collector's export) into an [`Aggregator`], which
//! joins both sides' records of a trial by `trial_id` (the counting rule is
//! in [`aggregate`]); [`Report::new`] computes the [`Summary`] (every number,
//! with Wilson 95% intervals from [`stats`]); [`Report::write`] writes
//! `index.html` ([`html`], charts by [`charts`] with `plotters`),
//! `summary.json`, `trials.csv` and `pairs.csv`.
//!
//! ```no_run
//! use punchscope_analysis::report::{input, Aggregator, Report};
//! let mut agg = Aggregator::new();
//! input::read_path("results/".as_ref(), &mut agg)?;
//! let report = Report::new(agg.finish(), &["results/".to_string()]);
//! let files = report.write("out".as_ref())?;
//! println!("{}\n{}", report.headline_table(), files.index_html.display());
//! # Ok::<(), punchscope_analysis::report::ReportError>(())
//! ```

pub mod aggregate;
pub mod breakdown;
pub mod charts;
pub mod cluster;
pub mod compare;
pub mod hardnat;
pub mod html;
pub mod input;
pub mod ipv6;
pub mod portmap;
pub mod reference;
pub mod stats;
pub mod summary;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub use aggregate::{Aggregated, Aggregator, CountedTrial, NatType, RunInfo};
pub use cluster::BootstrapConfig;
pub use stats::{wilson, Proportion};
pub use summary::{ReportConfig, Summary};

use stats::{percent, percent_bare};

/// Why a report could not be read or written (malformed input lines are not errors: they are skipped and listed).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{path}: writing CSV: {cause}")]
    Csv { path: PathBuf, cause: csv::Error },
    #[error("drawing a chart: {0}")]
    Chart(String),
}

/// The files a report wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    pub index_html: PathBuf,
    pub summary_json: PathBuf,
    pub trials_csv: PathBuf,
    pub pairs_csv: PathBuf,
}

/// A computed report: the summary and the counted trials behind it.
#[derive(Debug, Clone)]
pub struct Report {
    pub summary: Summary,
    pub trials: Vec<CountedTrial>,
    /// The runs, networks and pairing names the trials point to.
    pub runs: Vec<RunInfo>,
    pub networks: Vec<String>,
    pub pairing_ids: Vec<String>,
}

fn opt_f64(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v}"))
}

fn csv_err(path: &Path) -> impl Fn(csv::Error) -> ReportError + '_ {
    move |cause| ReportError::Csv {
        path: path.to_path_buf(),
        cause,
    }
}

impl Report {
    /// Computes the summary of aggregated trials; `inputs` names the sources.
    pub fn new(aggregated: Aggregated, inputs: &[String]) -> Report {
        Report::with_config(aggregated, inputs, &ReportConfig::default())
    }

    /// [`Report::new`] with a bootstrap and listing threshold of one's own.
    pub fn with_config(aggregated: Aggregated, inputs: &[String], config: &ReportConfig) -> Report {
        let summary = Summary::compute_with(&aggregated, inputs, config);
        Report {
            summary,
            trials: aggregated.trials,
            runs: aggregated.runs,
            networks: aggregated.networks,
            pairing_ids: aggregated.pairing_ids,
        }
    }

    /// The keyed network group of a volunteer's run, if it had one.
    fn volunteer_network(&self, run: Option<u32>) -> &str {
        run.map(|r| &self.runs[r as usize])
            .filter(|r| r.is_volunteer())
            .and_then(|r| r.network)
            .map_or("", |n| self.networks[n as usize].as_str())
    }

    /// Writes `index.html`, `summary.json`, `trials.csv` and `pairs.csv` into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> Result<ReportFiles, ReportError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |cause| ReportError::Io { path, cause }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let files = ReportFiles {
            index_html: dir.join("index.html"),
            summary_json: dir.join("summary.json"),
            trials_csv: dir.join("trials.csv"),
            pairs_csv: dir.join("pairs.csv"),
        };

        let mut json = serde_json::to_string_pretty(&self.summary).expect("a summary serializes");
        json.push('\n');
        std::fs::write(&files.summary_json, json).map_err(io(&files.summary_json))?;

        let path = &files.trials_csv;
        let file = File::create(path).map_err(io(path))?;
        let mut w = csv::Writer::from_writer(BufWriter::with_capacity(1 << 16, file));
        w.write_record([
            "trial_id",
            "sides_reporting",
            "strategy",
            "initiator_nat",
            "responder_nat",
            "outcome",
            "success",
            "go_to_established_ms",
            "attempts",
            "handshake_transport",
            "handshake_success",
            "pairing_id",
            "initiator_network",
            "responder_network",
            "node_handshake_transport",
            "node_handshake_success",
            "family",
        ])
        .map_err(csv_err(path))?;
        for t in &self.trials {
            let outcome = serde_json::to_value(t.outcome).expect("an outcome serializes");
            w.write_record([
                t.trial_id.as_deref().unwrap_or(""),
                &t.sides.to_string(),
                t.strategy.as_str(),
                &t.initiator_nat.to_string(),
                &t.responder_nat.to_string(),
                outcome.as_str().unwrap_or(""),
                if t.success { "true" } else { "false" },
                &opt_f64(t.go_to_established_ms),
                &t.attempts.to_string(),
                &t.handshake_transport
                    .map_or(String::new(), |x| x.to_string()),
                t.handshake_success
                    .map_or("", |s| if s { "true" } else { "false" }),
                &self.pairing_ids[t.pairing as usize],
                self.volunteer_network(t.initiator_run),
                self.volunteer_network(t.responder_run),
                &t.node_handshake_transport
                    .map_or(String::new(), |x| x.to_string()),
                t.node_handshake_success
                    .map_or("", |s| if s { "true" } else { "false" }),
                // Empty when the two sides' records name different families.
                t.family.map_or("", |f| f.as_str()),
            ])
            .map_err(csv_err(path))?;
        }
        let mut inner = w.into_inner().map_err(|e| ReportError::Io {
            path: path.clone(),
            cause: e.into_error(),
        })?;
        inner.flush().map_err(io(path))?;

        let path = &files.pairs_csv;
        let mut w = csv::Writer::from_path(path).map_err(csv_err(path))?;
        w.write_record([
            "nat_a",
            "nat_b",
            "trials",
            "successes",
            "rate",
            "wilson_low",
            "wilson_high",
        ])
        .map_err(csv_err(path))?;
        for c in &self.summary.nat_pairs {
            let p = &c.proportion;
            w.write_record([
                c.nat_a.as_str(),
                c.nat_b.as_str(),
                &p.n.to_string(),
                &p.successes.to_string(),
                &opt_f64(p.rate),
                &opt_f64(p.low),
                &opt_f64(p.high),
            ])
            .map_err(csv_err(path))?;
        }
        w.flush().map_err(io(path))?;

        let page = html::render(&self.summary)?;
        std::fs::write(&files.index_html, page).map_err(io(&files.index_html))?;
        Ok(files)
    }

    /// The headline numbers as a plain-text table for the terminal.
    pub fn headline_table(&self) -> String {
        let s = &self.summary;
        let c = &s.input;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{} trials counted from {} runs ({} joined from both sides, {} one side only, {} without trial id); {} input lines skipped",
            c.trials_counted, c.runs, c.trials_both_sides, c.trials_one_side, c.trials_without_id, s.skipped_lines.total
        );
        if s.headline.n == 0 {
            t.push_str("no trials in the input: nothing to measure\n");
            return t;
        }
        let row = |t: &mut String, label: &str, p: &Proportion| {
            let clustered = match p.quoted() {
                Some((l, h, "pairings")) => {
                    format!("[{:>5}, {:>5}]", percent_bare(l), percent_bare(h))
                }
                _ => "–".to_string(),
            };
            let _ = match (p.rate, p.low, p.high) {
                (Some(r), Some(l), Some(h)) => writeln!(
                    t,
                    "  {label:<28} {:>6}  {:<14}  [{:>5}, {:>5}]  {:>8} / {:<8}",
                    percent(r),
                    clustered,
                    percent_bare(l),
                    percent_bare(h),
                    p.successes,
                    p.n
                ),
                _ => writeln!(t, "  {label:<28}  no data"),
            };
        };
        let u = &s.uncertainty;
        let _ = writeln!(
            t,
            "  {:<28} {:>6}  {:<14}  {:<14}  {:>8} / {:<8}",
            "", "rate", "clustered 95%", "per-trial 95%", "success", "trials"
        );
        row(&mut t, "all trials", &s.headline);
        for st in &s.strategies {
            row(&mut t, &format!("strategy {}", st.strategy), &st.proportion);
        }
        for f in &s.families {
            row(&mut t, &format!("{} trials", f.family), &f.tables.headline);
            for st in &f.tables.strategies {
                let label = format!("{} strategy {}", f.family, st.strategy);
                row(&mut t, &label, &st.proportion);
            }
        }
        row(&mut t, "handshake v1 | punched", &s.handshake.v1);
        row(&mut t, "handshake v2 | punched", &s.handshake.v2);
        if let Some(nodes) = &s.node_handshake {
            row(&mut t, "nodes' handshake v1 | bridged", &nodes.v1);
            row(&mut t, "nodes' handshake v2 | bridged", &nodes.v2);
        }
        let v = &s.pairing_view;
        row(
            &mut t,
            "pairings connected once+",
            &v.connected_at_least_once,
        );
        let _ = writeln!(
            t,
            "  clustered: bootstrap over {} pairings, {} resamples; quote it, not the per-trial interval (summary.json also has one over {} networks)",
            u.pairings, u.resamples, u.networks
        );
        if let Some(c) = &s.family_comparison {
            if c.strategies.is_empty() {
                let _ = writeln!(t, "  ipv6 vs ipv4: {}", c.note);
            } else {
                t.push_str(
                    "  ipv6 - ipv4 within the pairings that ran both (paired 95% bootstrap):\n",
                );
            }
            for row in &c.strategies {
                let d = &row.difference;
                // A bootstrap over one pairing has no spread: no interval.
                let interval = match (d.low, d.high) {
                    (Some(l), Some(h)) => format!(
                        "[{:+.1}, {:+.1}], {} pairings",
                        l * 100.0,
                        h * 100.0,
                        d.pairings
                    ),
                    _ => format!(
                        "(no interval: {} pairing{})",
                        d.pairings,
                        if d.pairings == 1 { "" } else { "s" }
                    ),
                };
                let _ = writeln!(
                    t,
                    "    {}: ipv4 {}, ipv6 {}, difference {:+.1} points {interval}",
                    row.strategy,
                    row.ipv4.describe(),
                    row.ipv6.describe(),
                    d.difference * 100.0,
                );
            }
        }
        if !s.hard_nat.is_empty() {
            t.push_str("  by NAT-pair class (per-trial Wilson 95%):\n");
            for line in hardnat::lines(&s.hard_nat) {
                let _ = writeln!(t, "    {line}");
            }
        }
        t
    }
}

#[cfg(test)]
mod tests;
