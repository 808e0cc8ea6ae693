//! The plots of real runs (issue 19): well-formed SVG, one panel per figure
//! (revocation reach where revocation runs), and round tick values.

use vouch_simulator::{plot, run, BackendMode, RunOptions, RunOutput, Scenario};

async fn small(name: &str) -> RunOutput {
    let scenario = Scenario::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    run(RunOptions {
        scenario,
        peripherals: Some(20),
        gateways: Some(2),
        seed: 3,
        backend: BackendMode::InProc,
        database_url: None,
        backend_instances: 1,
        progress: false,
    })
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The text of every `<text>` element.
fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| {
            n.descendants()
                .filter(|c| c.is_text())
                .filter_map(|c| c.text())
                .collect::<String>()
                .trim()
                .to_owned()
        })
        .collect()
}

/// Significant digits of a decimal number as written (`250` → 2, `0.25` →
/// 2, `0` → 0).
fn significant_digits(s: &str) -> usize {
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    digits.trim_start_matches('0').trim_end_matches('0').len()
}

/// Parses `svg`, checks what every plot has, and returns its texts.
fn check(name: &str, svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg)
        .unwrap_or_else(|e| panic!("{name}: the SVG is not well-formed XML: {e}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg", "{name}");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg"),
        "{name}"
    );
    let texts = texts(&doc);
    // Tick labels are the texts that are numbers alone: each is round (at
    // most two significant digits, as ticks at multiples of 1, 2 or 5 × 10ⁿ
    // from 0 are), and plain (no float noise such as 0.30000000000000004).
    let ticks: Vec<&String> = texts.iter().filter(|t| t.parse::<f64>().is_ok()).collect();
    assert!(ticks.len() >= 8, "{name}: too few tick labels: {texts:?}");
    for t in &ticks {
        assert!(
            significant_digits(t) <= 2,
            "{name}: tick label {t} is not a round value: {texts:?}"
        );
    }
    for axis in ["latency, ms", "virtual time, s", "fraction of handshakes"] {
        assert!(texts.iter().any(|t| t == axis), "{name}: no {axis:?}");
    }
    texts
}

#[test]
fn significant_digits_of_labels() {
    assert_eq!(significant_digits("250"), 2);
    assert_eq!(significant_digits("0.25"), 2);
    assert_eq!(significant_digits("0"), 0);
    assert_eq!(significant_digits("1200"), 2);
    assert_eq!(significant_digits("233.3"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_revocation_plots_latency_and_the_timeline() {
    let out = small("baseline").await;
    let svg = plot::svg(&out).unwrap_or_else(|e| panic!("baseline: {e}"));
    let texts = check("baseline", &svg);
    assert!(
        !texts.iter().any(|t| t.starts_with("revocation reach")),
        "a revocation panel without revocations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_revocations_plots_their_reach() {
    let out = small("revocation").await;
    assert!(!out.revocations_ms.is_empty(), "no revocation reached");
    let p = out
        .report
        .revocation_ms
        .as_ref()
        .unwrap_or_else(|| panic!("no revocation_ms in the report"));
    assert_eq!(p.count, out.revocations_ms.len());
    let svg = plot::svg(&out).unwrap_or_else(|e| panic!("revocation: {e}"));
    let texts = check("revocation", &svg);
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("revocation reach") && t.contains(&format!("p99 {} ms", p.p99))),
        "no revocation panel with the report's p99: {texts:?}"
    );
    assert!(texts.iter().any(|t| t == "revocation reach, ms"));
}
