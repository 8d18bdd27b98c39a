//! Two reports side by side (`punchscope report --compare A B`): every rate of both, and the difference B − A with an interval from their clustered standard errors.
//!
//! The two inputs are independent samples (two campaigns, or two releases
//! of one), so the difference's standard error is the square root of the
//! sum of the two squared standard errors, each the pairing bootstrap's
//! (or, where a rate had none, the quoted interval's half-width / 1.96);
//! the interval is the difference ± 1.96 of it. That normal approximation
//! is rough near 0% and 100%, which the page says.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::charts::{self, RateBar};
use super::html::esc;
use super::stats::{percent, percent_bare, Proportion, Z_95};
use super::summary::{Summary, TrialTables};
use super::ReportError;
use crate::trial::Family;

/// One rate in both reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparedRate {
    pub section: String,
    pub row: String,
    pub a: Option<Proportion>,
    pub b: Option<Proportion>,
    /// rate(B) − rate(A), when both have one.
    pub difference: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

/// Both reports' counts and rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    /// (what, A, B).
    pub counts: Vec<(String, u64, u64)>,
    pub rates: Vec<ComparedRate>,
    pub method: String,
}

const METHOD: &str = "B − A for each rate, with a 95% interval of ±1.96 × sqrt(SE_A² + SE_B²), each SE the \
pairing bootstrap's standard error of that rate (or the quoted interval's half-width / 1.96 where there was no \
bootstrap). The two inputs are taken as independent samples; near 0% and 100% this normal approximation is rough.";

/// The standard error of a rate, clustered by pairing where possible.
fn std_error(p: &Proportion) -> Option<f64> {
    if let Some(se) = p.clustered.and_then(|c| c.pairings.std_error) {
        return Some(se);
    }
    let (low, high, _) = p.quoted()?;
    Some((high - low) / 2.0 / Z_95)
}

fn compared(
    section: &str,
    row: &str,
    a: Option<&Proportion>,
    b: Option<&Proportion>,
) -> ComparedRate {
    let rate = |p: Option<&Proportion>| p.and_then(|p| p.rate);
    let (difference, low, high) = match (rate(a), rate(b)) {
        (Some(ra), Some(rb)) => {
            let d = rb - ra;
            let se = a
                .and_then(std_error)
                .zip(b.and_then(std_error))
                .map(|(x, y)| (x * x + y * y).sqrt());
            (
                Some(d),
                se.map(|se| (d - Z_95 * se).max(-1.0)),
                se.map(|se| (d + Z_95 * se).min(1.0)),
            )
        }
        _ => (None, None, None),
    };
    ComparedRate {
        section: section.to_string(),
        row: row.to_string(),
        a: a.copied(),
        b: b.copied(),
        difference,
        low,
        high,
    }
}

/// A report's tables of one family: its split's, or, when it did not split,
/// its pooled tables if every trial it counted ran in that family.
fn family_tables(s: &Summary, family: Family) -> Option<TrialTables> {
    if let Some(f) = s.families.iter().find(|f| f.family == family.as_str()) {
        return Some(f.tables.clone());
    }
    let only = s.families.is_empty()
        && s.family_trials.len() == 1
        && s.family_trials.contains_key(family.as_str());
    only.then(|| s.pooled_tables())
}

/// The rates of one set of tables (all trials, or one family's) of both
/// reports, matched by name; `prefix` ("" or "ipv6 ") goes before each
/// section's name. A side without such tables has no rate in any row.
fn table_rates(
    rates: &mut Vec<ComparedRate>,
    prefix: &str,
    a: Option<&TrialTables>,
    b: Option<&TrialTables>,
) {
    rates.push(compared(
        &format!("{prefix}headline"),
        "all trials",
        a.map(|t| &t.headline),
        b.map(|t| &t.headline),
    ));
    let mut strategies: Vec<&str> = Vec::new();
    for row in a.iter().chain(b.iter()).flat_map(|t| &t.strategies) {
        if !strategies.contains(&row.strategy.as_str()) {
            strategies.push(&row.strategy);
        }
    }
    for name in strategies {
        let find = |t: Option<&TrialTables>| {
            t.and_then(|t| t.strategies.iter().find(|r| r.strategy == name))
                .map(|r| r.proportion)
        };
        rates.push(compared(
            &format!("{prefix}strategy"),
            name,
            find(a).as_ref(),
            find(b).as_ref(),
        ));
    }
    let mut cells: Vec<(String, String)> = a
        .iter()
        .chain(b.iter())
        .flat_map(|t| &t.nat_pairs)
        .map(|c| (c.nat_a.clone(), c.nat_b.clone()))
        .collect();
    cells.sort();
    cells.dedup();
    for (x, y) in cells {
        rates.push(compared(
            &format!("{prefix}NAT pair"),
            &format!("{x} × {y}"),
            a.and_then(|t| t.pair(&x, &y)).map(|c| &c.proportion),
            b.and_then(|t| t.pair(&x, &y)).map(|c| &c.proportion),
        ));
    }
    rates.push(compared(
        &format!("{prefix}handshake"),
        "v1 given a punched socket",
        a.map(|t| &t.handshake.v1),
        b.map(|t| &t.handshake.v1),
    ));
    rates.push(compared(
        &format!("{prefix}handshake"),
        "v2 given a punched socket",
        a.map(|t| &t.handshake.v2),
        b.map(|t| &t.handshake.v2),
    ));
}

/// Every rate of both reports, matched by name.
pub fn compare(a_label: &str, a: &Summary, b_label: &str, b: &Summary) -> Comparison {
    let c = |s: &Summary| {
        [
            ("runs", s.input.runs),
            ("pairings", s.uncertainty.pairings),
            ("volunteer networks", s.uncertainty.networks),
            ("trials counted", s.input.trials_counted),
            ("input lines skipped", s.skipped_lines.total),
        ]
    };
    let counts = c(a)
        .iter()
        .zip(c(b))
        .map(|((what, x), (_, y))| (what.to_string(), *x, y))
        .collect();
    let mut rates = Vec::new();
    table_rates(
        &mut rates,
        "",
        Some(&a.pooled_tables()),
        Some(&b.pooled_tables()),
    );
    rates.push(compared(
        "pairings",
        "connected at least once",
        Some(&a.pairing_view.connected_at_least_once),
        Some(&b.pairing_view.connected_at_least_once),
    ));
    rates.push(compared(
        "pairings",
        "connected every time",
        Some(&a.pairing_view.connected_every_time),
        Some(&b.pairing_view.connected_every_time),
    ));
    rates.push(compared(
        "attempts",
        "success on the first attempt",
        Some(&a.attempts.first_attempt),
        Some(&b.attempts.first_attempt),
    ));
    // Each family's rates, when either report split its trials by family
    // (an unsplit report's tables are its one family's).
    if !a.families.is_empty() || !b.families.is_empty() {
        for family in Family::ALL {
            let (x, y) = (family_tables(a, *family), family_tables(b, *family));
            if x.is_some() || y.is_some() {
                table_rates(&mut rates, &format!("{family} "), x.as_ref(), y.as_ref());
            }
        }
    }
    Comparison {
        a: a_label.to_string(),
        b: b_label.to_string(),
        counts,
        rates,
        method: METHOD.to_string(),
    }
}

fn rate_text(p: Option<&Proportion>) -> String {
    match p {
        Some(p) => match (p.rate, p.quoted()) {
            (Some(r), Some((l, h, _))) => format!(
                "{} <span class=note>[{}–{}] {}/{}</span>",
                percent(r),
                percent_bare(l),
                percent_bare(h),
                p.successes,
                p.n
            ),
            _ => "no data".to_string(),
        },
        None => "–".to_string(),
    }
}

fn points(x: f64) -> String {
    format!("{:+.1}", x * 100.0)
}

/// The comparison page: self-contained, like the report.
pub fn render(c: &Comparison) -> Result<String, ReportError> {
    let mut h = String::with_capacity(32 * 1024);
    h.push_str("<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n");
    h.push_str("<meta name=viewport content=\"width=device-width, initial-scale=1\">\n");
    h.push_str("<title>punchscope: two reports side by side</title>\n");
    let _ = write!(h, "<style>{}</style>\n</head>\n<body>\n", super::html::CSS);
    h.push_str("<h1>Two reports side by side</h1>\n");
    let _ = writeln!(
        h,
        "<p class=sub>A: {} · B: {} · each report in full in <code>a/</code> and <code>b/</code></p>",
        esc(&c.a),
        esc(&c.b)
    );
    h.push_str("<section id=counts>\n<h2>What was read</h2>\n<table><tr><th></th><th>A</th><th>B</th></tr>\n");
    for (what, x, y) in &c.counts {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=num>{x}</td><td class=num>{y}</td></tr>",
            esc(what)
        );
    }
    h.push_str("</table>\n</section>\n");
    h.push_str("<section id=rates>\n<h2>Rates</h2>\n");
    h.push_str(
        "<p class=note>Each rate with its 95% interval clustered by pairing and its counts.</p>\n",
    );
    h.push_str("<table><tr><th>section</th><th>rate</th><th>A</th><th>B</th><th>B − A (points)</th><th>95%</th></tr>\n");
    for r in &c.rates {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
            esc(&r.section),
            esc(&r.row),
            rate_text(r.a.as_ref()),
            rate_text(r.b.as_ref()),
            r.difference.map_or("–".to_string(), points),
            match (r.low, r.high) {
                (Some(l), Some(hi)) => format!("{} to {}", points(l), points(hi)),
                _ => "–".to_string(),
            }
        );
    }
    h.push_str("</table>\n");
    let mut bars = Vec::new();
    for r in c
        .rates
        .iter()
        .filter(|r| r.section == "headline" || r.section == "strategy")
    {
        for (side, p) in [("A", &r.a), ("B", &r.b)] {
            if let Some(p) = p {
                if let Some(mut bar) = RateBar::from_proportion(&format!("{side}: {}", r.row), p) {
                    if let Some((l, hi, _)) = p.quoted() {
                        bar.low = Some(l);
                        bar.high = Some(hi);
                    }
                    bar.ours = side == "A";
                    bars.push(bar);
                }
            }
        }
    }
    if let Some(svg) = charts::rate_bars(&bars, "success rate")? {
        let _ = writeln!(h, "<div class=chart>{svg}</div>");
        h.push_str("<p class=note>Blue: A; grey: B. Whiskers: 95% clustered by pairing.</p>\n");
    }
    let _ = writeln!(h, "<p class=note>{}</p>", esc(&c.method));
    h.push_str("</section>\n</body>\n</html>\n");
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Aggregator, Report};

    #[test]
    fn a_report_compared_with_itself_differs_by_nothing() {
        let report = Report::new(Aggregator::new().finish(), &[]);
        let c = compare("a", &report.summary, "b", &report.summary);
        assert_eq!(c.counts[0], ("runs".to_string(), 0, 0));
        // No trials: no rate, no difference, no NaN.
        assert!(c.rates.iter().all(|r| r.difference.is_none()));
        let page = render(&c).unwrap();
        assert!(!page.contains("NaN"));
    }

    #[test]
    fn differences_take_both_standard_errors() {
        let mut a = Proportion::new(50, 100);
        let mut b = Proportion::new(70, 100);
        a.clustered = None;
        b.clustered = None;
        let r = compared("headline", "all", Some(&a), Some(&b));
        assert!((r.difference.unwrap() - 0.2).abs() < 1e-12);
        // Per-trial SEs from the Wilson half-widths: about 0.0485 and 0.0449.
        let half = r.high.unwrap() - 0.2;
        assert!(
            (half - 1.96 * (0.0485f64.powi(2) + 0.0449f64.powi(2)).sqrt()).abs() < 0.003,
            "{half}"
        );
    }
}
