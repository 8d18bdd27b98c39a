//! A synthetic campaign for the report tests and the report benchmark:
//! pairings of two runs each (built by [`super::results::run`]) drawn from a
//! seeded generator and written as collector export lines. The numbers are
//! made up, loosely after the lab's findings: for tests and benchmarks only.

use punchscope::analysis::handshake::Role;
use punchscope::analysis::nat::{Filtering, Mapping};
use punchscope::analysis::trial::{Family, TrialOutcome};

use super::results::{run, verdict, SideTrial};

/// NAT types a synthetic campaign draws from, with rough weights.
const SYNTHETIC_TYPES: &[(Option<Mapping>, Option<Filtering>, u32)] = &[
    (Some(Mapping::Eim), Some(Filtering::Apdf), 40),
    (Some(Mapping::Eim), Some(Filtering::Adf), 10),
    (Some(Mapping::Eim), Some(Filtering::Eif), 10),
    (Some(Mapping::Apdm), Some(Filtering::Apdf), 15),
    (Some(Mapping::Adm), Some(Filtering::Adf), 5),
    (Some(Mapping::Eim), None, 10),
    (None, None, 10),
];

fn pick_type(rng: &mut impl rand::Rng) -> (Option<Mapping>, Option<Filtering>) {
    let total: u32 = SYNTHETIC_TYPES.iter().map(|t| t.2).sum();
    let mut x = rng.gen_range(0..total);
    for &(m, f, w) in SYNTHETIC_TYPES {
        if x < w {
            return (m, f);
        }
        x -= w;
    }
    (None, None)
}

/// A made-up chance that a pair punches, loosely after the lab's findings
/// (EIM on both sides punches; APDM rarely does). Synthetic, for tests only.
fn synthetic_chance(
    a: (Option<Mapping>, Option<Filtering>),
    b: (Option<Mapping>, Option<Filtering>),
) -> f64 {
    let eim = |t: (Option<Mapping>, Option<Filtering>)| t.0 == Some(Mapping::Eim);
    match (eim(a), eim(b)) {
        (true, true) => 0.9,
        (true, false) | (false, true) => 0.35,
        _ => 0.08,
    }
}

/// Volunteers' network labels and systems a synthetic campaign draws from.
const SYNTHETIC_LABELS: &[&str] = &["home-fibre", "home-cable", "home-dsl", "mobile"];
const SYNTHETIC_SYSTEMS: &[&str] = &["linux", "macos", "windows"];

/// Writes `pairs` pairings (two runs each, both sides of `trials` trials
/// sharing trial ids) as collector export lines, deterministically from
/// `seed`. Each run is uploaded from one of `pairs` networks (keyed groups),
/// so a network takes part in two pairings on average, never both sides of
/// one. Returns the runs written. Synthetic numbers: for tests and
/// benchmarks only. Every trial runs over IPv4.
pub fn write_synthetic_jsonl(
    out: &mut impl std::io::Write,
    pairs: usize,
    trials: usize,
    seed: u64,
) -> usize {
    write_synthetic_campaign(out, pairs, trials, seed, false)
}

/// As [`write_synthetic_jsonl`]; with `dual_stack`, every third pairing
/// (the first, the fourth, ...) runs its odd trials over IPv6, where a pair
/// punches less often (a made-up factor of 0.6), so that the report's
/// family split and its IPv4/IPv6 comparison have something to show.
pub fn write_synthetic_campaign(
    out: &mut impl std::io::Write,
    pairs: usize,
    trials: usize,
    seed: u64,
    dual_stack: bool,
) -> usize {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut runs = 0;
    for pairing in 0..pairs {
        let a = pick_type(&mut rng);
        let b = pick_type(&mut rng);
        let chance = synthetic_chance(a, b);
        let ids: Vec<Option<String>> = (0..trials)
            .map(|_| Some(format!("{:032x}", rng.gen::<u128>())))
            .collect();
        let mut side_a = Vec::with_capacity(trials);
        let mut side_b = Vec::with_capacity(trials);
        let family_of = |n: usize| {
            if dual_stack && pairing % 3 == 0 && n % 2 == 1 {
                Family::Ipv6
            } else {
                Family::Ipv4
            }
        };
        for n in 0..trials {
            // low_ttl (every third trial from 2) does a little better.
            let bonus = if n % 3 == 2 { 0.1 } else { 0.0 };
            let over = if family_of(n) == Family::Ipv6 {
                0.6
            } else {
                1.0
            };
            if rng.gen_bool(((chance + bonus) * over).min(1.0)) {
                let attempts = if rng.gen_bool(0.85) {
                    1
                } else {
                    rng.gen_range(2..=4)
                };
                let go = 180.0 + rng.gen::<f64>().powi(3) * 900.0 + (attempts - 1) as f64 * 450.0;
                let ok_a = rng.gen_bool(0.97);
                let ok_b = ok_a || rng.gen_bool(0.5);
                side_a.push(SideTrial::connected(go, attempts, ok_a));
                side_b.push(SideTrial::connected(
                    go + rng.gen_range(0.0..15.0),
                    attempts,
                    ok_b,
                ));
            } else {
                let outcome = if rng.gen_bool(0.6) {
                    TrialOutcome::Refused
                } else {
                    TrialOutcome::Timeout
                };
                side_a.push(SideTrial::failed(outcome, 4));
                side_b.push(SideTrial::failed(TrialOutcome::Timeout, 4));
            }
        }
        let va = verdict(a.0, a.1);
        let vb = verdict(b.0, b.1);
        let mut ra = run(Role::Initiator, va.clone(), Some(vb.clone()), &ids, &side_a);
        let mut rb = run(Role::Responder, vb, Some(va), &ids, &side_b);
        for r in [&mut ra, &mut rb] {
            for record in &mut r.pairings[0].trials {
                record.family = family_of(record.trial as usize);
            }
        }
        let network_a = rng.gen_range(0..pairs.max(2));
        let network_b = (network_a + rng.gen_range(1..pairs.max(2))) % pairs.max(2);
        for (mut r, network) in [(ra, network_a), (rb, network_b)] {
            r.client.network_label =
                Some(SYNTHETIC_LABELS[rng.gen_range(0..SYNTHETIC_LABELS.len())].to_string());
            r.client.os = SYNTHETIC_SYSTEMS[rng.gen_range(0..SYNTHETIC_SYSTEMS.len())].to_string();
            let line = punchscope::analysis::result::CollectedResult {
                received_at: r.ended_at,
                source_net: "203.0.113.0/24".into(),
                source_group: format!(
                    "{:064x}",
                    (network as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ),
                result: r,
            };
            serde_json::to_writer(&mut *out, &line).unwrap();
            out.write_all(b"\n").unwrap();
            runs += 1;
        }
    }
    runs
}
