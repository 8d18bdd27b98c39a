//! The self-contained `index.html`: inline CSS, inline SVG charts, no scripts, fonts or links that need a network.

use std::fmt::Write as _;

use super::charts::{self, RateBar};
use super::cluster::{ClusterInterval, IntervalMethod};
use super::stats::{percent, percent_bare, Proportion};
use super::summary::{FamilyComparison, GroupTable, NodeHandshakeSummary, Summary, TrialTables};
use super::ReportError;
use crate::trial::{Family, Strategy};

/// Escapes text for HTML element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{v:.0} ms"))
}

/// "12.3–45.6% (k=12)" for a clustered interval, "–" without one.
fn cluster_cell(c: Option<&ClusterInterval>) -> String {
    match c {
        Some(c) => {
            let fallback = if c.method == IntervalMethod::ClustersAsTrials {
                "<sup title=\"every cluster had the same rate: Wilson interval over clusters\">†</sup>"
            } else {
                ""
            };
            format!(
                "<td class=num>{}–{}%{fallback} <span class=note>(k={})</span></td>",
                percent_bare(c.low),
                percent_bare(c.high),
                c.clusters
            )
        }
        None => "<td class=num>–</td>".to_string(),
    }
}

fn rate_cells(p: &Proportion) -> String {
    let clustered = p.clustered.as_ref();
    match (p.rate, p.low, p.high) {
        (Some(r), Some(l), Some(h)) => format!(
            "<td class=num>{}</td>{}{}<td class=num>{}–{}%</td><td class=num>{}</td><td class=num>{}</td>",
            percent(r),
            cluster_cell(clustered.map(|c| &c.pairings)),
            cluster_cell(clustered.and_then(|c| c.networks.as_ref())),
            percent_bare(l),
            percent_bare(h),
            p.successes,
            p.n
        ),
        _ => format!(
            "<td class=num>no data</td><td class=num>–</td><td class=num>–</td><td class=num>–</td><td class=num>{}</td><td class=num>{}</td>",
            p.successes, p.n
        ),
    }
}

const RATE_HEAD: &str = "<th>success</th><th>95% clustered by pairing <span class=note>(quote this)</span></th>\
<th>95% clustered by network <span class=note>(conservative check)</span></th><th>per-trial Wilson 95%</th><th>successes</th><th>trials</th>";

/// A bar whose whisker is the interval to quote.
fn quoted_bar(label: &str, p: &Proportion) -> Option<RateBar> {
    let mut bar = RateBar::from_proportion(label, p)?;
    if let Some((low, high, _)) = p.quoted() {
        bar.low = Some(low);
        bar.high = Some(high);
    }
    Some(bar)
}

/// Group rows shown in the page; summary.json has every listed group.
const MAX_PAGE_GROUP_ROWS: usize = 50;

/// A table of group rows (networks, labels, clients).
fn group_rows(h: &mut String, title: &str, table: &GroupTable, short_keys: bool) {
    let _ = writeln!(
        h,
        "<table><tr><th>{}</th><th>runs</th><th>pairings</th>{RATE_HEAD}</tr>",
        esc(title)
    );
    for row in table.rows.iter().take(MAX_PAGE_GROUP_ROWS) {
        let key = if short_keys {
            format!(
                "<code title=\"{}\">{}…</code>",
                esc(&row.key),
                esc(&row.key.chars().take(12).collect::<String>())
            )
        } else {
            esc(&row.key)
        };
        let _ = writeln!(
            h,
            "<tr><td>{key}</td><td class=num>{}</td><td class=num>{}</td>{}</tr>",
            row.runs,
            row.pairings,
            rate_cells(&row.proportion)
        );
    }
    h.push_str("</table>\n");
    if table.rows.len() > MAX_PAGE_GROUP_ROWS {
        let _ = writeln!(
            h,
            "<p class=note>The {MAX_PAGE_GROUP_ROWS} with the most trials are shown; all {} are in <code>summary.json</code>.</p>",
            table.rows.len()
        );
    }
    let _ = writeln!(
        h,
        "<p class=note>{} listed of {} with any trial; groups with fewer than {} trials are not listed (their {} trial memberships are in every total above). \
         A trial between two groups counts in both rows.</p>",
        table.rows.len(),
        table.groups,
        table.min_trials,
        table.trials_unlisted
    );
}

fn signed_points(x: f64) -> String {
    // Adding 0.0 turns a negated zero into +0.0: no "-0.0" on the page.
    format!("{:+.1}", x * 100.0 + 0.0)
}

/// Background for a success rate: red (0%) through yellow to green (100%).
fn heat(rate: f64) -> String {
    format!("hsl({:.0}, 70%, 78%)", rate.clamp(0.0, 1.0) * 120.0)
}

/// A sign test's p-value: three decimals, "< 0.001" below them (where
/// "0.000" would read as impossible), "–" without one.
fn p_value(p: Option<f64>) -> String {
    match p {
        Some(p) if p < 0.0005 => "&lt; 0.001".to_string(),
        Some(p) => format!("{p:.3}"),
        None => "–".to_string(),
    }
}

/// "IPv4", "IPv6" for a family's name in the summary.
fn family_title(name: &str) -> String {
    Family::ALL.iter().find(|f| f.as_str() == name).map_or_else(
        || esc(name),
        |f| match f {
            Family::Ipv4 => "IPv4".to_string(),
            Family::Ipv6 => "IPv6".to_string(),
        },
    )
}

/// The row groups of a table split by family: each family's tables, then
/// all trials pooled, each with its label; when the trials ran in one
/// family, only the pooled tables, unlabelled, so the page is as before.
fn family_groups(summary: &Summary) -> Vec<(Option<String>, TrialTables)> {
    if summary.families.is_empty() {
        return vec![(None, summary.pooled_tables())];
    }
    summary
        .families
        .iter()
        .map(|f| (Some(family_title(&f.family)), f.tables.clone()))
        .chain(std::iter::once((
            Some("all, pooled".to_string()),
            summary.pooled_tables(),
        )))
        .collect()
}

/// Which families the trials ran in: one line under the headline.
fn family_label(h: &mut String, summary: &Summary) {
    let families: Vec<String> = summary
        .family_trials
        .iter()
        .map(|(f, n)| format!("{} {n}", family_title(f)))
        .collect();
    match families.len() {
        0 => {}
        1 => {
            let (family, _) = summary.family_trials.iter().next().expect("one family");
            let _ = writeln!(
                h,
                "<p class=note>IP family: every trial ran over {}.</p>",
                family_title(family)
            );
        }
        _ => {
            let _ = writeln!(
                h,
                "<p class=note>IP family: trials per family: {}. Each table of rates below shows each family on its own, then all trials pooled; \
                 IPv4 and IPv6 between the same volunteers are compared under <a href=\"#families\">IPv4 beside IPv6</a>.</p>",
                families.join(", ")
            );
        }
    }
}

/// The family column's header cell, when the table is split.
fn family_head(split: bool) -> &'static str {
    if split {
        "<th>IP family</th>"
    } else {
        ""
    }
}

/// The family column's cell, when the table is split.
fn family_cell(label: &Option<String>) -> String {
    label
        .as_ref()
        .map_or_else(String::new, |l| format!("<td>{l}</td>"))
}

/// One NAT-pair matrix.
fn nat_matrix(h: &mut String, tables: &TrialTables) {
    h.push_str("<table class=matrix><tr><th>side A \\ side B</th>");
    for t in &tables.nat_types {
        let _ = write!(h, "<th>{}</th>", esc(t));
    }
    h.push_str("</tr>\n");
    for (i, a) in tables.nat_types.iter().enumerate() {
        let _ = write!(h, "<tr><th>{}</th>", esc(a));
        for (j, b) in tables.nat_types.iter().enumerate() {
            if j < i {
                h.push_str("<td class=mirror>·</td>");
                continue;
            }
            match tables.pair(a, b).map(|c| &c.proportion) {
                Some(p) => {
                    let rate = p.rate.unwrap_or(0.0);
                    let clustered = match p.quoted() {
                        Some((l, hi, "pairings")) => format!(
                            "<span class=cell-n>clustered [{}–{}]</span>",
                            percent_bare(l),
                            percent_bare(hi)
                        ),
                        _ => String::new(),
                    };
                    let _ = write!(
                        h,
                        "<td style=\"background:{}\" title=\"{} × {}\"><span class=cell-rate>{}</span>{clustered}<span class=cell-n>per trial [{}–{}] {}/{}</span></td>",
                        heat(rate),
                        esc(a),
                        esc(b),
                        percent(rate),
                        p.low.map_or("–".into(), percent_bare),
                        p.high.map_or("–".into(), percent_bare),
                        p.successes,
                        p.n
                    );
                }
                None => h.push_str("<td class=empty>no trials</td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

/// IPv4 beside IPv6 within the same pairings; shown once any trial ran
/// over IPv6 (an IPv4-only report has no such section).
fn families_section(h: &mut String, comparison: &FamilyComparison) {
    h.push_str("<section id=families>\n<h2>IPv4 beside IPv6 between the same volunteers</h2>\n");
    let one_family: Vec<String> = comparison
        .pairings_one_family
        .iter()
        .map(|(f, n)| format!("{} only: {n}", family_title(f)))
        .collect();
    let _ = writeln!(
        h,
        "<p class=note>Pairings with trials over both families: {}{}{}.</p>",
        comparison.pairings_both,
        if one_family.is_empty() { "" } else { "; " },
        one_family.join("; ")
    );
    if comparison.strategies.is_empty() {
        let _ = writeln!(h, "<p class=nodata>{}</p>", esc(&comparison.note));
        h.push_str("</section>\n");
        return;
    }
    let _ = writeln!(h, "<p class=note>{}</p>", esc(&comparison.note));
    h.push_str("<table><tr><th>strategy</th><th>pairings</th><th>IPv4</th><th>IPv6</th><th>IPv6 − IPv4 (points)</th><th>95% paired</th><th>pairings IPv6 better / IPv4 better / tied</th><th>sign test p</th></tr>\n");
    for row in &comparison.strategies {
        let d = &row.difference;
        let interval = match (d.low, d.high) {
            (Some(l), Some(hi)) => format!("{} to {}", signed_points(l), signed_points(hi)),
            _ => "– (one pairing)".to_string(),
        };
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td class=num>{}</td><td>{}</td><td>{}</td><td class=num>{}</td><td class=num>{interval}</td><td class=num>{} / {} / {}</td><td class=num>{}</td></tr>",
            esc(&row.strategy),
            d.pairings,
            share(&row.ipv4),
            share(&row.ipv6),
            signed_points(d.difference),
            d.a_better,
            d.b_better,
            d.ties,
            p_value(d.sign_test_p),
        );
    }
    h.push_str("</table>\n</section>\n");
}

fn chart_or_note(svg: Option<String>, note: &str) -> String {
    match svg {
        Some(svg) => format!("<div class=chart>{svg}</div>"),
        None => format!("<p class=nodata>{}</p>", esc(note)),
    }
}

pub(crate) const CSS: &str = "
body { font-family: -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif; max-width: 1100px; margin: 24px auto; padding: 0 16px; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
.sub { color: #555; margin-top: 0; }
.headline { font-size: 2.4em; font-weight: 700; margin: 0.2em 0; }
.headline small { font-size: 0.45em; font-weight: 400; color: #444; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.95em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.matrix td { text-align: center; min-width: 86px; }
table.matrix td.empty { background: #f7f7f7; color: #aaa; }
table.matrix td.mirror { background: #fff; color: #ccc; }
.cell-rate { font-weight: 600; display: block; }
.cell-n { font-size: 0.8em; color: #333; }
.nodata { color: #8a4b00; background: #fff6e5; padding: 8px 12px; border-left: 4px solid #e0a030; }
.note { color: #555; font-size: 0.9em; }
.chart svg { max-width: 100%; height: auto; border: 1px solid #eee; }
code { background: #f3f3f3; padding: 0 3px; }
";

/// Renders the whole page from the summary.
pub fn render(summary: &Summary) -> Result<String, ReportError> {
    let mut h = String::with_capacity(64 * 1024);
    let total = summary.input.trials_counted;
    h.push_str("<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n");
    h.push_str("<meta name=viewport content=\"width=device-width, initial-scale=1\">\n");
    h.push_str(
        "<title>punchscope report: TCP hole punching between Bitcoin nodes behind NATs</title>\n",
    );
    let _ = write!(h, "<style>{CSS}</style>\n</head>\n<body>\n");
    h.push_str("<h1>TCP hole punching between Bitcoin nodes behind home NATs</h1>\n");
    let _ = writeln!(
        h,
        "<p class=sub>{} · inputs: {}</p>",
        esc(&summary.generator),
        esc(&summary.inputs.join(", "))
    );

    // Headline.
    h.push_str("<section id=headline>\n<h2>Success rate</h2>\n");
    match (summary.headline.rate, summary.headline.low, summary.headline.high) {
        (Some(r), Some(l), Some(hi)) => {
            let u = &summary.uncertainty;
            let quoted = match summary.headline.quoted() {
                Some((ql, qh, _)) => format!(
                    "95% interval {}–{}% (clustered by pairing: {} pairings)",
                    percent_bare(ql),
                    percent_bare(qh),
                    u.pairings
                ),
                None => String::new(),
            };
            let _ = writeln!(
                h,
                "<p class=headline>{} <small>of trials connected ({} of {}) · {} · per-trial Wilson {}–{}%</small></p>",
                percent(r),
                summary.headline.successes,
                summary.headline.n,
                quoted,
                percent_bare(l),
                percent_bare(hi)
            );
            let _ = write!(
                h,
                "<table><tr><th></th>{RATE_HEAD}</tr><tr><td>all trials</td>{}</tr>",
                rate_cells(&summary.headline)
            );
            for f in &summary.families {
                let _ = write!(
                    h,
                    "<tr><td>{} trials</td>{}</tr>",
                    family_title(&f.family),
                    rate_cells(&f.tables.headline)
                );
            }
            h.push_str("</table>\n");
            let _ = writeln!(
                h,
                "<p class=note><strong>Which interval to quote:</strong> {} See <em>Uncertainty</em> below.</p>",
                esc(&summary.uncertainty.advice)
            );
        }
        _ => h.push_str(
            "<p class=nodata><strong>No data:</strong> the input holds no trials, so there is no success rate to report. \
             Check the inputs and the skipped lines below.</p>\n",
        ),
    }
    h.push_str("<p class=note>A trial is one coordinated punching attempt between two volunteers (with retries inside it). \
                It is a success when a TCP connection was established and both sides proved, by exchanging the coordinator's nonce, \
                that they reached each other; a trial reported by both sides counts once and needs both to say connected.</p>\n");
    family_label(&mut h, summary);
    h.push_str("<table><tr><th>what was read</th><th>count</th></tr>\n");
    let c = &summary.input;
    for (label, v) in [
        ("runs (distinct run ids)", c.runs),
        (
            "… of them reference peers' (one per pairing)",
            c.reference_runs,
        ),
        ("duplicate runs ignored", c.duplicate_runs),
        ("pairings", c.pairings),
        ("trial records (both sides' records)", c.trial_records),
        ("trials counted", c.trials_counted),
        ("… joined from both sides", c.trials_both_sides),
        (
            "… one side only (other side not in the input)",
            c.trials_one_side,
        ),
        (
            "… without trial id (counted on their own)",
            c.trials_without_id,
        ),
        ("duplicate trial records ignored", c.duplicate_trial_records),
        ("joined trials where the sides disagree", c.sides_disagree),
        (
            "mapped trials not tried (no side held a mapping; IPv6 trials ask for none), not counted",
            c.trials_unmapped,
        ),
        (
            "input lines skipped (malformed)",
            summary.skipped_lines.total,
        ),
    ] {
        let _ = writeln!(h, "<tr><td>{}</td><td class=num>{v}</td></tr>", esc(label));
    }
    // A row only when it happened, so that IPv4-only reports stay as they were.
    if c.family_disagree > 0 {
        let _ = writeln!(
            h,
            "<tr><td>joined trials whose sides name different IP families (in pooled rates only)</td><td class=num>{}</td></tr>",
            c.family_disagree
        );
    }
    h.push_str("</table>\n");
    if !summary.outcomes.is_empty() {
        h.push_str("<table><tr><th>trial outcome</th><th>trials</th><th>share</th></tr>\n");
        for (name, n) in &summary.outcomes {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=num>{n}</td><td class=num>{}</td></tr>",
                esc(name),
                percent(*n as f64 / total.max(1) as f64)
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</section>\n");

    // References.
    h.push_str("<section id=references>\n<h2>Beside published figures</h2>\n");
    h.push_str("<p class=note>Published figures measure related but different things (per NAT, per libp2p attempt); \
                they are context, not a like-for-like comparison.</p>\n");
    let _ = writeln!(
        h,
        "<table><tr><th>source</th><th>success</th><th>range shown</th><th>what it measures</th><th>citation</th></tr>"
    );
    let _ = writeln!(
        h,
        "<tr><td><strong>this report</strong></td><td class=num>{}</td><td class=num>{}</td><td>punchscope trials, both sides connected</td><td>–</td></tr>",
        summary.headline.rate.map_or("no data".into(), percent),
        match summary.headline.quoted() {
            Some((l, hi, how)) => format!("95% {}–{}% (clustered: {how})", percent_bare(l), percent_bare(hi)),
            _ => "–".into(),
        }
    );
    let mut bars = Vec::new();
    if let Some(b) = quoted_bar("this report", &summary.headline) {
        bars.push(b);
    }
    for r in &summary.references {
        let f = &r.figure;
        let range = match (r.low, r.high) {
            (Some(l), Some(hi)) => format!("{}–{}%", percent_bare(l), percent_bare(hi)),
            _ => "–".into(),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=num>{}</td><td class=num>{}<br><span class=note>{}</span></td><td>{}</td><td>{} <span class=note>{}</span><br><span class=note>{}</span></td></tr>",
            esc(&f.label),
            percent(f.rate),
            range,
            esc(&f.interval_note),
            esc(&f.measures),
            esc(&f.citation),
            esc(&f.url),
            esc(&f.checked)
        );
        bars.push(RateBar {
            label: f.short_label.clone(),
            rate: f.rate,
            low: r.low,
            high: r.high,
            ours: false,
        });
    }
    h.push_str("</table>\n");
    h.push_str(&chart_or_note(
        charts::rate_bars(&bars, "success rate")?,
        "no figures to draw",
    ));
    h.push_str("<p class=note>Blue: this report, with its clustered 95% interval. Grey: published figures, whiskers as listed in the table.</p>\n");
    h.push_str("</section>\n");

    // NAT pair matrix.
    h.push_str("<section id=nat-matrix>\n<h2>Success by NAT-type pair</h2>\n");
    h.push_str("<p class=note>Rows and columns: the NAT type of each side, mapping/filtering (RFC 4787: EIM, ADM, APDM; EIF, ADF, APDF), \
                from each run's own classification (\"unknown\" where not known exactly). Pairs are unordered: a trial between A and B \
                is in row A, column B with A before B in the order shown; the mirror half is left blank. \
                Cell: success rate, its 95% interval clustered by pairing, the per-trial Wilson 95% interval, successes/trials.</p>\n");
    if summary.nat_pairs.is_empty() {
        h.push_str("<p class=nodata>No trials: no NAT pairs to show.</p>\n");
    } else {
        for (label, tables) in family_groups(summary) {
            if let Some(label) = label {
                let _ = writeln!(h, "<h3>{label}</h3>");
            }
            nat_matrix(&mut h, &tables);
        }
    }
    h.push_str("</section>\n");

    // Strategies.
    h.push_str("<section id=strategies>\n<h2>Success by punching strategy</h2>\n");
    if summary.strategies.is_empty() {
        h.push_str("<p class=nodata>No trials: no strategies to compare.</p>\n");
    } else {
        let groups = family_groups(summary);
        let split = groups.len() > 1;
        let _ = writeln!(
            h,
            "<table><tr>{}<th>strategy</th>{RATE_HEAD}<th>median time to connect</th></tr>",
            family_head(split)
        );
        for (label, tables) in &groups {
            for s in &tables.strategies {
                let _ = writeln!(
                    h,
                    "<tr>{}<td><code>{}</code></td>{}<td class=num>{}</td></tr>",
                    family_cell(label),
                    esc(&s.strategy),
                    rate_cells(&s.proportion),
                    ms(s.median_ms)
                );
            }
        }
        h.push_str("</table>\n");
        // The chart stays one bar per strategy over all trials; the table splits them.
        let bars: Vec<RateBar> = summary
            .strategies
            .iter()
            .filter_map(|s| quoted_bar(&s.strategy, &s.proportion))
            .collect();
        h.push_str(&chart_or_note(
            charts::rate_bars(&bars, "success rate")?,
            "no data",
        ));
    }
    h.push_str("<p class=note><code>simultaneous</code>: both sides connect() at the coordinated moment, with retries. \
                <code>connect_listen</code>: the same, and each side also listens on its port. \
                <code>low_ttl</code>: each side first opens its own NAT mapping with a SYN whose TTL dies before the peer's NAT, then connects and listens. \
                Whiskers: the clustered 95% interval. To compare strategies, use the paired comparison under <em>Pairings</em>.</p>\n");
    h.push_str("</section>\n");
    if let Some(comparison) = &summary.family_comparison {
        families_section(&mut h, comparison);
    }

    // Carrier-grade NAT: a table of its own, shown once any trial has a path measurement.
    if summary.cgnat.iter().any(|row| row.group != "not_measured") {
        h.push_str("<section id=cgnat>\n<h2>Success with and without carrier-grade NAT</h2>\n");
        let _ = writeln!(h, "<table><tr><th>trials</th>{RATE_HEAD}</tr>");
        for row in &summary.cgnat {
            let label = match row.group.as_str() {
                "behind_cgnat" => "a side behind carrier-grade NAT",
                "no_cgnat" => "neither side behind carrier-grade NAT",
                _ => "not measured (a side without the path probe)",
            };
            let _ = writeln!(
                h,
                "<tr><td>{label}</td>{}</tr>",
                rate_cells(&row.proportion)
            );
        }
        h.push_str("</table>\n<p class=note>Carrier-grade NAT: the side's TTL-limited probe met a router in the shared address space 100.64.0.0/10 before the public internet.</p>\n</section>\n");
    }
    hard_nat_section(&mut h, summary);
    portmap_section(&mut h, summary);
    pairings_section(&mut h, summary);

    // Handshake: punchscope's own, then the nodes' (bridge mode) beside it.
    let hs = &summary.handshake;
    h.push_str("<section id=handshake>\n<h2>Bitcoin P2P handshake over a punched socket</h2>\n");
    let _ = writeln!(
        h,
        "<p class=note>Among the {} trials that connected: did version/verack and a ping/pong complete over the punched connection? \
         v1 is the plaintext transport, v2 is BIP324. {} connected trials had no handshake recorded; {} failed before the transport was known.</p>",
        hs.connected_trials, hs.without_handshake, hs.transport_unknown
    );
    let groups = family_groups(summary);
    let _ = writeln!(
        h,
        "<table><tr>{}<th>transport</th>{RATE_HEAD}</tr>",
        family_head(groups.len() > 1)
    );
    for (label, tables) in &groups {
        let (family, hs) = (family_cell(label), &tables.handshake);
        let _ = writeln!(h, "<tr>{family}<td>v1</td>{}</tr>", rate_cells(&hs.v1));
        let _ = writeln!(
            h,
            "<tr>{family}<td>v2 (BIP324)</td>{}</tr>",
            rate_cells(&hs.v2)
        );
    }
    h.push_str("</table>\n");
    let bars: Vec<RateBar> = [("v1", &hs.v1), ("v2 (BIP324)", &hs.v2)]
        .into_iter()
        .filter_map(|(l, p)| quoted_bar(l, p))
        .collect();
    h.push_str(&chart_or_note(
        charts::rate_bars(&bars, "handshake success given a punched socket")?,
        "No handshakes over punched sockets in the input.",
    ));
    h.push_str("</section>\n");
    if let Some(nodes) = &summary.node_handshake {
        node_handshake_section(&mut h, nodes, &groups)?;
    }

    // Time to connect.
    let t = &summary.time_to_connect;
    h.push_str("<section id=time-to-connect>\n<h2>Time to connect</h2>\n");
    let _ = writeln!(
        h,
        "<p class=note>From the coordinator's <code>go</code> to the connection established (the later of the two sides), over the {} successful trials with a time recorded. Percentiles are nearest-rank.</p>",
        t.n
    );
    let _ = writeln!(
        h,
        "<table><tr><th>min</th><th>median</th><th>p90</th><th>p99</th><th>max</th><th>mean</th></tr>\
         <tr><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr></table>",
        ms(t.min_ms),
        ms(t.p50_ms),
        ms(t.p90_ms),
        ms(t.p99_ms),
        ms(t.max_ms),
        ms(t.mean_ms)
    );
    h.push_str(&chart_or_note(
        charts::cdf_chart(summary)?,
        "No successful trials: no times to plot.",
    ));
    h.push_str("</section>\n");

    // Attempts.
    let a = &summary.attempts;
    h.push_str("<section id=attempts>\n<h2>Attempts per success</h2>\n");
    let _ = writeln!(
        h,
        "<p class=note>connect() attempts inside each successful trial (the larger of the two sides' counts). \
         First attempt: {}. Mean: {}. (Trautwein et al. 2025 report 97.6% of libp2p successes on the first attempt.)</p>",
        a.first_attempt.describe(),
        a.mean.map_or("–".into(), |m| format!("{m:.2}"))
    );
    let counts: Vec<(String, u64)> = a
        .histogram
        .iter()
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
    h.push_str(&chart_or_note(
        charts::count_bars(&counts, "attempts", "successful trials")?,
        "No successful trials: no attempts to count.",
    ));
    h.push_str("</section>\n");

    networks_section(&mut h, summary)?;
    groups_section(&mut h, summary);

    // Classification.
    let cl = &summary.classification;
    h.push_str("<section id=classification>\n<h2>NAT classification of the runs</h2>\n");
    let _ = writeln!(
        h,
        "<p class=note>One count per volunteer's run (reference peers' runs are not counted here), from its classification verdict; {} runs.</p>",
        cl.runs
    );
    h.push_str("<div style=\"display:flex; gap:24px; flex-wrap:wrap; align-items:flex-start\">");
    for (title, map) in [("mapping", &cl.mapping), ("filtering", &cl.filtering)] {
        let _ = write!(h, "<table><tr><th>{title}</th><th>runs</th></tr>");
        for (k, v) in map {
            let _ = write!(h, "<tr><td>{}</td><td class=num>{v}</td></tr>", esc(k));
        }
        h.push_str("</table>");
    }
    h.push_str("<table><tr><th>NAT type</th><th>runs</th></tr>");
    for (k, v) in &cl.types {
        let _ = write!(h, "<tr><td>{}</td><td class=num>{v}</td></tr>", esc(k));
    }
    h.push_str("</table></div>\n");
    h.push_str(&chart_or_note(
        charts::count_bars(&cl.types, "NAT type (mapping/filtering)", "runs")?,
        "No runs in the input.",
    ));
    ipv6_table(&mut h, &summary.ipv6);
    h.push_str("</section>\n");

    uncertainty_section(&mut h, summary);

    // Method and skipped input.
    h.push_str("<section id=method>\n<h2>How this was counted</h2>\n");
    let _ = writeln!(h, "<p>{}</p>", esc(&summary.counting_rule));
    let s = &summary.skipped_lines;
    if s.total == 0 {
        h.push_str("<p>No input line was skipped.</p>\n");
    } else {
        let _ = writeln!(
            h,
            "<p>{} input line(s) were skipped and not counted. By reason:</p><table><tr><th>reason</th><th>lines</th></tr>",
            s.total
        );
        for (k, v) in &s.by_reason {
            let _ = writeln!(h, "<tr><td>{}</td><td class=num>{v}</td></tr>", esc(k));
        }
        h.push_str("</table><table><tr><th>source</th><th>line</th><th>reason</th></tr>\n");
        for e in &s.examples {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=num>{}</td><td>{}</td></tr>",
                esc(&e.source),
                e.line,
                esc(&e.reason)
            );
        }
        h.push_str("</table>\n");
        if s.total as usize > s.examples.len() {
            let _ = writeln!(
                h,
                "<p class=note>Only the first {} are listed.</p>",
                s.examples.len()
            );
        }
    }
    h.push_str("<p class=note>Every number on this page is in <code>summary.json</code>; one row per counted trial is in \
                <code>trials.csv</code>, one row per NAT pair in <code>pairs.csv</code>. \
                <code>trials.csv</code> names each trial's pairing and networks, for analyses of one's own that respect the clustering.</p>\n");
    h.push_str("</section>\n</body>\n</html>\n");
    Ok(h)
}

/// Success counted per pairing, and strategies compared within pairings.
/// Bridge mode: did the volunteers' own nodes complete their version
/// handshake through the hole, by the transport they chose.
fn node_handshake_section(
    h: &mut String,
    nodes: &NodeHandshakeSummary,
    groups: &[(Option<String>, TrialTables)],
) -> Result<(), ReportError> {
    h.push_str("<section id=node-handshake>\n<h2>Bitcoin nodes' own handshake through a punched socket (bridge mode)</h2>\n");
    let _ = writeln!(
        h,
        "<p class=note>{} connected trials handed the socket to the volunteers' own Bitcoin nodes instead of punchscope's handshake: \
         did both nodes complete version/verack (their <code>getpeerinfo</code>)? The nodes chose the transport themselves. \
         {} bridged trials had no node listing the peer, so no transport.</p>",
        nodes.bridged_trials, nodes.transport_unknown
    );
    let _ = writeln!(
        h,
        "<table><tr>{}<th>transport</th>{RATE_HEAD}</tr>",
        family_head(groups.len() > 1)
    );
    for (label, tables) in groups {
        let Some(of_group) = &tables.node_handshake else {
            continue;
        };
        let family = family_cell(label);
        let _ = writeln!(
            h,
            "<tr>{family}<td>v1</td>{}</tr>",
            rate_cells(&of_group.v1)
        );
        let _ = writeln!(
            h,
            "<tr>{family}<td>v2 (BIP324)</td>{}</tr>",
            rate_cells(&of_group.v2)
        );
    }
    h.push_str("</table>\n");
    let bars: Vec<RateBar> = [("v1", &nodes.v1), ("v2 (BIP324)", &nodes.v2)]
        .into_iter()
        .filter_map(|(l, p)| quoted_bar(l, p))
        .collect();
    h.push_str(&chart_or_note(
        charts::rate_bars(&bars, "nodes' handshake success given a punched socket")?,
        "No node-to-node handshakes with a known transport in the input.",
    ));
    h.push_str("</section>\n");
    Ok(())
}

/// A share with its per-run Wilson interval: "3 of 8 (37.5%, 13.7–69.4%)".
fn share(p: &Proportion) -> String {
    match (p.rate, p.low, p.high) {
        (Some(r), Some(l), Some(h)) => format!(
            "{} of {} ({}, {}–{}%)",
            p.successes,
            p.n,
            percent(r),
            percent_bare(l),
            percent_bare(h)
        ),
        _ => "no data".to_string(),
    }
}

fn counts(map: &std::collections::BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = map.iter().map(|(k, n)| format!("{} {n}", esc(k))).collect();
    if parts.is_empty() {
        "–".to_string()
    } else {
        parts.join(", ")
    }
}

/// Port mapping (PCP, NAT-PMP, UPnP IGD): shown once any volunteer's run has a record.
fn portmap_section(h: &mut String, summary: &Summary) {
    let pm = &summary.port_mapping;
    if pm.runs == 0 {
        return;
    }
    h.push_str("<section id=portmap>\n<h2>Port mapping: does the router open the node's port by itself?</h2>\n");
    let _ = writeln!(
        h,
        "<p class=note>{} volunteers' runs recorded port mapping; asked nothing: {}. Per protocol, of the runs that asked for the node's port, with per-run Wilson 95% intervals.</p>",
        pm.runs,
        counts(&pm.skipped)
    );
    h.push_str("<table><tr><th>protocol</th><th>router answered</th><th>granted</th><th>granted on a public address</th><th>granted behind another NAT</th><th>reachable from the internet</th><th>deletion confirmed</th><th>lifetime granted (min / median / max s)</th><th>answers</th><th>result codes</th></tr>\n");
    for row in &pm.protocols {
        let name = match row.protocol.as_str() {
            "pcp" => "PCP".to_string(),
            "natpmp" => "NAT-PMP".to_string(),
            "upnp" => "UPnP IGD".to_string(),
            other => esc(other),
        };
        let mut lifetime = row.lifetime_s.map_or("–".to_string(), |l| {
            format!("{:.0} / {:.0} / {:.0}", l.min, l.median, l.max)
        });
        if row.permanent > 0 {
            let _ = write!(lifetime, "; permanent {}", row.permanent);
        }
        let _ = writeln!(
            h,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td class=num>{}</td><td>{}</td><td>{}</td><td>{lifetime}</td><td>{}</td><td>{}</td></tr>",
            share(&row.answered),
            share(&row.granted),
            share(&row.granted_public),
            row.granted_behind_nat,
            share(&row.reachable),
            share(&row.deleted),
            counts(&row.answers),
            counts(&row.results)
        );
    }
    h.push_str("</table>\n<p class=note><em>refused</em>: ICMP port unreachable, nothing listens on the router's port 5351 (UPnP IGD: 1900, or its HTTP server refused). \
                <em>permanent</em>: UPnP mappings the router held with lease 0 (no expiry), though 120 s was asked. \
                A mapping on a private or 100.64/10 external address sits behind another NAT (often carrier-grade) and opens nothing on the internet. \
                <em>Reachable</em>: the echo server dialed the volunteer's own public address at the port granted for the probe's own port, and the probe received it (of the runs where that was tried).</p>\n");
    mapped_strategy(h, summary);
    h.push_str("</section>\n");
}

/// The `mapped` strategy (one side listens behind its router's mapping, the
/// other connects to it) beside punching, within the pairings that ran both.
fn mapped_strategy(h: &mut String, summary: &Summary) {
    let mapped = Strategy::Mapped.as_str();
    let row = summary.strategies.iter().find(|r| r.strategy == mapped);
    let unmapped = summary.input.trials_unmapped;
    if row.is_none() && unmapped == 0 {
        return;
    }
    h.push_str("<h3>The <code>mapped</code> strategy beside punching</h3>\n");
    let mut tried = row.map_or("no mapped trial was tried".to_string(), |r| {
        format!("connected in {}", share(&r.proportion))
    });
    // Each family's mapped trials, when the trials ran in two (the
    // comparison with punching below pools them: docs/report.md).
    let by_family: Vec<String> = summary
        .families
        .iter()
        .filter_map(|f| {
            let r = f.tables.strategies.iter().find(|r| r.strategy == mapped)?;
            Some(format!(
                "{} {}",
                family_title(&f.family),
                share(&r.proportion)
            ))
        })
        .collect();
    if !by_family.is_empty() {
        let _ = write!(tried, " ({})", by_family.join("; "));
    }
    let _ = writeln!(
        h,
        "<p class=note>In a <code>mapped</code> trial the side whose router mapped its trial port listens behind the mapping and the other connects straight to it: no punching. \
         Tried: {tried}; not tried (neither router mapped a port, left out of every rate): {unmapped}.</p>"
    );
    let rows: Vec<_> = summary
        .pairing_view
        .comparisons
        .iter()
        .filter(|c| c.strategy_a == mapped || c.strategy_b == mapped)
        .collect();
    if rows.is_empty() {
        h.push_str("<p class=note>No pairing ran both <code>mapped</code> and a punching strategy: no comparison.</p>\n");
        return;
    }
    h.push_str("<p class=note>Within the pairings that ran both (same routers, same paths): each side's trials with Wilson 95% intervals, \
                and the difference with its 95% bootstrap interval over pairings (as in <a href=\"#pairings\">Pairings</a>).</p>\n");
    h.push_str("<table><tr><th>punching strategy</th><th>pairings</th><th><code>mapped</code></th><th>punching</th><th>mapped − punching (points)</th><th>95% paired</th></tr>\n");
    for c in rows {
        let d = &c.difference;
        // Orient every row as mapped − punching.
        let (other, m, p, sign) = if c.strategy_a == mapped {
            (
                &c.strategy_b,
                (d.successes_a, d.trials_a),
                (d.successes_b, d.trials_b),
                1.0,
            )
        } else {
            (
                &c.strategy_a,
                (d.successes_b, d.trials_b),
                (d.successes_a, d.trials_a),
                -1.0,
            )
        };
        let interval = match (d.low, d.high) {
            (Some(l), Some(hi)) => {
                let (l, hi) = if sign > 0.0 { (l, hi) } else { (-hi, -l) };
                format!("{} to {}", signed_points(l), signed_points(hi))
            }
            _ => "– (one pairing)".to_string(),
        };
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td class=num>{}</td><td>{}</td><td>{}</td><td class=num>{}</td><td class=num>{interval}</td></tr>",
            esc(other),
            d.pairings,
            share(&Proportion::new(m.0, m.1)),
            share(&Proportion::new(p.0, p.1)),
            signed_points(sign * d.difference),
        );
    }
    h.push_str("</table>\n");
}

fn pairings_section(h: &mut String, summary: &Summary) {
    let v = &summary.pairing_view;
    h.push_str("<section id=pairings>\n<h2>Pairings</h2>\n");
    if v.pairings == 0 {
        h.push_str("<p class=nodata>No pairings in the input.</p>\n</section>\n");
        return;
    }
    let _ = writeln!(
        h,
        "<p class=note>The same data counted per pairing (two volunteers, or a volunteer and a reference peer, running a plan's trials together): {} pairings. \
         A pairing that connected at least once shows that those two NATs can be punched through; one that connected every time shows it is reliable.</p>",
        v.pairings
    );
    let _ = writeln!(
        h,
        "<table><tr><th>pairings that connected</th>{RATE_HEAD}</tr>"
    );
    let _ = writeln!(
        h,
        "<tr><td>at least once</td>{}</tr>",
        rate_cells(&v.connected_at_least_once)
    );
    let _ = writeln!(
        h,
        "<tr><td>every time</td>{}</tr>",
        rate_cells(&v.connected_every_time)
    );
    for s in &v.strategies {
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code> at least once</td>{}</tr><tr><td><code>{}</code> every time</td>{}</tr>",
            esc(&s.strategy),
            rate_cells(&s.at_least_once),
            esc(&s.strategy),
            rate_cells(&s.every_time)
        );
    }
    h.push_str("</table>\n");
    if v.comparisons.is_empty() {
        h.push_str("<p class=note>No pairing ran two strategies: no paired comparison.</p>\n");
    } else {
        h.push_str("<h3>Strategies compared within the same pairings</h3>\n");
        h.push_str("<p class=note>Each row uses only the pairings that ran both strategies, so both rates come from the same routers, paths and moments; \
                    the difference is far more precise than a comparison of rates measured on different pairs. \
                    Interval: 95% bootstrap over pairings (a pairing's trials of both strategies are drawn together). \
                    Sign test: pairings where A did better against pairings where B did, ties left out.</p>\n");
        h.push_str("<table><tr><th>A</th><th>B</th><th>pairings</th><th>A</th><th>B</th><th>A − B (points)</th><th>95% paired</th>\
                    <th>A better / B better / tie</th><th>sign test p</th></tr>\n");
        for c in &v.comparisons {
            let d = &c.difference;
            let interval = match (d.low, d.high) {
                (Some(l), Some(hi)) => format!("{} to {}", signed_points(l), signed_points(hi)),
                _ => "– (one pairing)".to_string(),
            };
            let _ = writeln!(
                h,
                "<tr><td><code>{}</code></td><td><code>{}</code></td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td>\
                 <td class=num>{}</td><td class=num>{}</td><td class=num>{} / {} / {}</td><td class=num>{}</td></tr>",
                esc(&c.strategy_a),
                esc(&c.strategy_b),
                d.pairings,
                percent(d.rate_a),
                percent(d.rate_b),
                signed_points(d.difference),
                interval,
                d.a_better,
                d.b_better,
                d.ties,
                p_value(d.sign_test_p)
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</section>\n");
}

/// Success per keyed network group, and the spread of the per-network rates.
fn networks_section(h: &mut String, summary: &Summary) -> Result<(), ReportError> {
    let n = &summary.networks;
    h.push_str("<section id=networks>\n<h2>Per network</h2>\n");
    h.push_str("<p class=note>One row per volunteer network: the collector's keyed group of the address a run was uploaded from \
                (HMAC-SHA256 under the collector's secret key, so equal for runs from the same address and meaningless without the key; \
                never an address). Reference peers are not listed. Only results read from a collector export carry a group.</p>\n");
    if n.table.groups == 0 {
        h.push_str("<p class=nodata>No network groups in the input: the results were not read from a collector export.</p>\n</section>\n");
        return Ok(());
    }
    group_rows(h, "network (keyed group)", &n.table, true);
    if n.table.rows.is_empty() {
        h.push_str("<p class=nodata>No network has enough trials to be listed.</p>\n</section>\n");
        return Ok(());
    }
    let _ = writeln!(
        h,
        "<p class=note>Distribution over the {} listed networks: median {}; {} never connected, {} always connected.</p>",
        n.table.rows.len(),
        n.median_rate.map_or("–".to_string(), percent),
        n.never_connected,
        n.always_connected
    );
    h.push_str(&chart_or_note(
        charts::count_bars(
            &n.rate_histogram,
            "success rate of the network's trials",
            "networks",
        )?,
        "no listed networks",
    ));
    h.push_str("</section>\n");
    Ok(())
}

/// Success by the volunteer's own network label and by client version.
fn groups_section(h: &mut String, summary: &Summary) {
    h.push_str("<section id=groups>\n<h2>By network label and client</h2>\n");
    h.push_str("<p class=note>The label a volunteer gave the network (e.g. <code>home-fibre</code>), and the client's OS, architecture and punchscope version, \
                of the volunteer sides of each trial.</p>\n");
    group_rows(h, "network label", &summary.network_labels, false);
    group_rows(h, "client", &summary.clients, false);
    h.push_str("</section>\n");
}

/// How the intervals were made and which one to quote.
fn uncertainty_section(h: &mut String, summary: &Summary) {
    let u = &summary.uncertainty;
    h.push_str("<section id=uncertainty>\n<h2>Uncertainty: which interval to quote</h2>\n");
    let _ = writeln!(h, "<p>{}</p>", esc(&u.advice));
    let _ = writeln!(
        h,
        "<p class=note>Clusters in this input: {} pairings; {} networks ({} keyed network groups from the collector, {} volunteer runs without a group, each counted as its own network). \
         Each interval is the 2.5th–97.5th percentile of {} resamples (seed {}), never narrower than the per-trial Wilson interval; \
         † marks a row where every cluster had the same rate, so that the Wilson interval with the clusters as the trials is shown instead. \
         The design effect (in <code>summary.json</code>) is how many times fewer independent trials the data is worth. \
         The method, with a worked example, is in docs/report.md.</p>",
        u.pairings, u.networks, u.keyed_networks, u.runs_without_group, u.resamples, u.seed
    );
    if let Some(c) = &summary.headline.clustered {
        let deff = |c: &ClusterInterval| {
            c.design_effect
                .map_or("–".to_string(), |d| format!("{d:.2}"))
        };
        let _ = writeln!(
            h,
            "<p class=note>Headline design effect: {} by pairing, {} by network.</p>",
            deff(&c.pairings),
            c.networks.as_ref().map_or("–".to_string(), deff)
        );
    }
    h.push_str("</section>\n");
}

/// Success by strategy within each NAT-pair class, and what the hard-NAT
/// strategies cost per success; shown when the summary has such rows.
fn hard_nat_section(h: &mut String, summary: &Summary) {
    if summary.hard_nat.is_empty() {
        return;
    }
    h.push_str("<section id=hard-nat>\n<h2>Strategies within each NAT-pair class</h2>\n");
    let groups = family_groups(summary);
    let _ = writeln!(
        h,
        "<table><tr>{}<th>NAT pair</th><th>allocation</th><th>strategy</th>{RATE_HEAD}<th>attempts / success</th><th>ports tried / success</th><th>SYNs / success</th></tr>",
        family_head(groups.len() > 1)
    );
    let per = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    for (label, row) in groups
        .iter()
        .flat_map(|(label, tables)| tables.hard_nat.iter().map(move |row| (label, row)))
    {
        let (a, p, s) =
            row.cost
                .as_ref()
                .map_or(("".to_string(), "".to_string(), "".to_string()), |c| {
                    (
                        per(c.attempts_per_success),
                        per(c.ports_per_success),
                        per(c.syns_per_success),
                    )
                });
        let _ = writeln!(
            h,
            "<tr>{}<td>{}</td><td>{}</td><td>{}</td>{}<td>{a}</td><td>{p}</td><td>{s}</td></tr>",
            family_cell(label),
            esc(&row.class_label),
            esc(&row.allocation),
            esc(&row.arm),
            rate_cells(&row.proportion)
        );
    }
    h.push_str("</table>\n<p class=note>NAT pair: EIM is an endpoint-independent mapping (or no NAT), APDM an address- or address-and-port-dependent one with its port allocation, from both sides' classification. \
                Allocation: <em>mix</em> rows drew each trial's strategy at random from the plan's list for that class (shuffled rounds); <em>rotation</em> rows took the plan's strategies in turn. Rates are compared only within one row group. \
                <code>predict</code>: the easy side aims at a window of ports after the hard side's observed one. <code>birthday</code>: the hard side opens m connections, the easy side sends SYNs to n random ports; expected success about 1 - exp(-m n / range). \
                Costs are totals over both sides divided by successes; SYNs count each connect() and the retransmissions Linux makes while it waits. Intervals: Wilson 95% per trial.</p>\n</section>\n");
}

/// The IPv6 breakdown beside the classification tables, when some
/// volunteer's run asked about IPv6 (reports without it stay as they were).
fn ipv6_table(h: &mut String, ipv6: &super::ipv6::Ipv6Summary) {
    if ipv6.is_empty() {
        return;
    }
    h.push_str("<h3 id=ipv6>IPv6</h3>\n");
    let _ = writeln!(
        h,
        "<p class=note>Dual-stack volunteers' runs classify IPv6 apart from IPv4; IPv6-only volunteers' one classification is an IPv6 one (they are left out of the NAT tables above). {} runs with an IPv6 classification ({} of them IPv6-only), {} whose IPv6 classification failed (no route or no answer). Trials over IPv6 are in the strategy tables by family and in the IPv4-beside-IPv6 comparison. Rates are per run, of the runs where it was measured, with Wilson 95% intervals.</p>",
        ipv6.runs, ipv6.ipv6_only, ipv6.missing
    );
    h.push_str("<table><tr><th>over IPv6</th><th>runs</th><th>rate [95% interval] (runs/measured)</th></tr>");
    let rows = [
        (
            "translated (NPTv6 or NAT66)",
            "untranslated",
            &ipv6.translated,
        ),
        (
            "unsolicited connections admitted",
            "unsolicited connections turned away",
            &ipv6.unsolicited_admitted,
        ),
    ];
    for (yes, no, proportion) in rows {
        let _ = write!(
            h,
            "<tr><td>{yes}</td><td class=num>{}</td><td>{}</td></tr><tr><td>{no}</td><td class=num>{}</td><td></td></tr>",
            proportion.successes,
            esc(&proportion.describe()),
            proportion.n - proportion.successes
        );
    }
    h.push_str("</table>\n");
    let kinds = &ipv6.translation_kinds;
    if kinds.known() > 0 {
        let _ = writeln!(
            h,
            "<table><tr><th>translation kind (runs that named it)</th><th>runs</th></tr><tr><td>none</td><td class=num>{}</td></tr><tr><td>NPTv6 (stateless prefix translation, RFC 6296)</td><td class=num>{}</td></tr><tr><td>NAT66 (any other translation)</td><td class=num>{}</td></tr></table>",
            kinds.none, kinds.nptv6, kinds.nat66
        );
    }
}
