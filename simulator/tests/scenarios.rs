//! Every built-in scenario at a small size, through the library: the
//! attacks get nothing, honest devices are unharmed, detection fires where
//! the backend is meant to flag, and a seed gives the same run twice.

use vouch_simulator::scenario::BUILTINS;
use vouch_simulator::{run, BackendMode, Error, Report, RunOptions, Scenario};

async fn small(name: &str, seed: u64) -> Report {
    let scenario = Scenario::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    run(RunOptions {
        scenario,
        peripherals: Some(20),
        gateways: Some(2),
        seed,
        backend: BackendMode::InProc,
        database_url: None,
        backend_instances: 1,
        progress: false,
    })
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"))
    .report
}

/// The checks every scenario must pass; returns the report for more.
async fn check(name: &str) -> Report {
    let r = small(name, 7).await;
    let json = serde_json::to_string(&r).unwrap_or_default();
    assert_eq!(
        r.honest_rejected, 0,
        "{name}: honest devices refused: {json}"
    );
    assert!(r.handshakes.ok > 0, "{name}: nothing connected: {json}");
    for (class, a) in &r.attacks {
        assert_eq!(a.accepted, 0, "{name}: attack {class} got through: {json}");
    }
    if is_attack(name) {
        let a = r
            .attacks
            .get(name)
            .unwrap_or_else(|| panic!("{name}: no tally: {json}"));
        assert!(a.attempts > 0, "{name}: the adversary never tried: {json}");
    }
    r
}

fn is_attack(name: &str) -> bool {
    vouch_simulator::scenario::AttackClass::ALL
        .iter()
        .any(|c| c.name() == name)
}

macro_rules! scenario_tests {
    ($($f:ident => $name:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $f() {
                check($name).await;
            }
        )*
        #[test]
        fn every_builtin_has_a_test() {
            let tested = [
                $($name,)*
                "churn", "backend-outage", "revocation", "revoked-peripheral", "clone",
                "brute-force", "rogue-central", "slot-stall", "old-key", "link-cap",
            ];
            for (name, _) in BUILTINS {
                assert!(tested.contains(name), "built-in {name} has no test here");
            }
        }
    };
}

scenario_tests! {
    baseline => "baseline",
    revocation_reach => "revocation-reach",
    scale => "scale",
    mac_spoof => "mac-spoof",
    replay => "replay",
    vouch_swap => "vouch-swap",
    rogue_gateway => "rogue-gateway",
    revoked_gateway => "revoked-gateway",
    relay => "relay",
    tamper => "tamper",
    downgrade => "downgrade",
    flood => "flood",
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_resumes() {
    let r = check("churn").await;
    assert!(r.resumptions.ok > 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_outage_resumes_and_excuses_only_the_refused_newcomers() {
    let r = check("backend-outage").await;
    assert!(r.resumptions.ok > 0, "{r:?}");
    assert!(
        r.handshakes.excused > 0,
        "newcomers during the outage: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_live_sessions() {
    let r = check("revocation").await;
    let rev = r.revocation_ms.clone().expect("revocation_ms");
    assert!(rev.count > 0, "{r:?}");
    let a = &r.attacks["revoked-peripheral"];
    assert!(a.attempts > 0 && a.accepted == 0, "{r:?}");
}

/// Two backend instances on one database, gateways alternating between
/// them: a revocation made on the first reaches the gateways of the second
/// too (the run fails if the feed does not reach every gateway in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_the_gateways_of_another_backend_instance() {
    let scenario = Scenario::load("revocation").expect("the revocation scenario");
    let out = run(RunOptions {
        scenario,
        peripherals: Some(20),
        gateways: Some(2),
        seed: 7,
        backend: BackendMode::InProc,
        database_url: None,
        backend_instances: 2,
        progress: false,
    })
    .await
    .expect("a run across two backend instances");
    let r = out.report;
    assert_eq!(r.honest_rejected, 0, "{r:?}");
    assert!(
        r.revocation_ms.as_ref().is_some_and(|p| p.count > 0),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_peripherals_are_cut_off() {
    let r = check("revoked-peripheral").await;
    assert!(
        r.revocation_ms.as_ref().is_some_and(|p| p.count > 0),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_are_detected() {
    let r = check("clone").await;
    assert!(r.attacks["clone"].detected > 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_is_detected() {
    let r = check("brute-force").await;
    assert!(r.attacks["brute-force"].detected > 0, "{r:?}");
}

/// Every device holding a ticket meets a rogue central six times while the
/// backend is down (forged confirmations, garbage, `ResumptionRejected`),
/// and then still resumes with its genuine gateway: nothing unauthenticated
/// cost it a ticket (SPEC.md §6.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rogue_centrals_during_an_outage_cost_no_device_its_ticket() {
    let r = check("rogue-central").await;
    let a = &r.attacks["rogue-central"];
    assert_eq!(a.attempts, 20 * 6, "every device met the rogue: {r:?}");
    // 20 resumed with their genuine gateway during the outage, besides the
    // churn's resumptions before it.
    assert!(r.resumptions.ok >= 20, "{r:?}");
}

/// Silent links fill every free slot of both gateways (more links than
/// slots) before the devices come; every device still completes its
/// handshake, taking the slot of a link that never spoke (SPEC.md §8.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_links_cannot_keep_honest_devices_out() {
    let r = check("slot-stall").await;
    // 10 devices per gateway: 10 + 8 spare slots each, and 16 links more.
    assert_eq!(r.attacks["slot-stall"].attempts, 2 * (18 + 16), "{r:?}");
    assert_eq!(r.handshakes.failed, 0, "{r:?}");
    // The 15 devices offline at the attack (fresh and returning) got in.
    assert_eq!(r.handshakes.ok, 25, "{r:?}");
}

/// After a rotation, a thief of the old key runs a gateway: the 10 devices
/// that applied the rotation refuse its handshake, the 10 that have not
/// complete it (key 1 is still their anchor, SPEC.md §11.15) and refuse the
/// 3 updates it pushes; then every device reaches its genuine gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thief_of_the_rotated_away_key_gains_nothing() {
    let r = check("old-key").await;
    assert_eq!(r.attacks["old-key"].attempts, 10 + 10 * 3, "{r:?}");
    assert_eq!(r.handshakes.failed, 0, "{r:?}");
}

/// More devices than the centrals connect at once (20 a gateway within half
/// a second, 2 links each): no gateway ever holds more than 2 links, in the
/// real run or in the modelled time line; every device still gets in, after
/// waiting for a link; and the handshakes take longer in modelled time than
/// with the cap lifted (virtual time, the same for every run of a seed: not
/// a timing assertion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_queue_for_a_capped_central_and_take_longer() {
    let run_with = |cap: usize| async move {
        let mut scenario = Scenario::load("link-cap").expect("the link-cap scenario");
        scenario.link.max_links = cap;
        run(RunOptions {
            scenario,
            peripherals: Some(40),
            gateways: Some(2),
            seed: 7,
            backend: BackendMode::InProc,
            database_url: None,
            backend_instances: 1,
            progress: false,
        })
        .await
        .expect("a link-cap run")
        .report
    };
    let capped = run_with(2).await;
    let free = run_with(0).await;
    for r in [&capped, &free] {
        assert_eq!(r.honest_rejected, 0, "{r:?}");
        assert_eq!(r.handshakes.full_ok, 40, "every device got in: {r:?}");
    }
    assert_eq!(capped.link.max_links, 2);
    assert!(
        (1..=2).contains(&capped.link.peak_links),
        "the real centrals held at most 2 links: {:?}",
        capped.link
    );
    assert_eq!(capped.link.peak_links_modelled, 2, "{:?}", capped.link);
    assert!(
        capped.link.queued > 20,
        "most devices waited: {:?}",
        capped.link
    );
    assert_eq!(free.link.queued, 0, "{:?}", free.link);
    assert!(
        capped.latency_ms.p50 > free.latency_ms.p50 && capped.latency_ms.max > free.latency_ms.max,
        "the cap lengthens the modelled handshakes: {:?} vs {:?}",
        capped.latency_ms,
        free.latency_ms
    );
    assert!(capped.virtual_s >= free.virtual_s, "{capped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_run() {
    for name in ["churn", "tamper"] {
        let a = small(name, 42).await;
        let b = small(name, 42).await;
        assert_eq!(a.deterministic(), b.deterministic(), "{name}");
        let c = small(name, 43).await;
        assert_ne!(
            a.deterministic(),
            c.deterministic(),
            "{name}: the seed changes nothing"
        );
    }
}

#[test]
fn a_bad_scenario_names_the_line_and_the_field() {
    let text = "name = \"x\"\ndescription = \"y\"\n\n[fleet]\nperipherals = 3\ngateways = 1\nperipheral = 4\n";
    match Scenario::parse(text, "bad.toml") {
        Err(Error::Scenario {
            origin,
            line,
            message,
            ..
        }) => {
            assert_eq!(origin, "bad.toml");
            assert_eq!(line, 7, "{message}");
            assert!(message.contains("peripheral"), "{message}");
        }
        other => panic!("expected a scenario error, got {other:?}"),
    }
    let text = "name = \"x\"\ndescription = \"y\"\n[fleet]\nperipherals = 3\ngateways = 1\n\n[[event]]\nat_s = 1.0\naction = \"attack\"\n";
    match Scenario::parse(text, "bad.toml") {
        Err(Error::Scenario { line, message, .. }) => {
            assert!(message.contains("class"), "{message}");
            assert!((7..=9).contains(&line), "line {line}: {message}");
        }
        other => panic!("expected a scenario error, got {other:?}"),
    }
    let text = "name = \"x\"\ndescription = \"y\"\n[fleet]\nperipherals = \"many\"\ngateways = 1\n";
    match Scenario::parse(text, "bad.toml") {
        Err(e @ Error::Scenario { line: 4, .. }) => {
            assert!(e.to_string().starts_with("bad.toml:4:"), "{e}");
        }
        other => panic!("expected a scenario error at line 4, got {other:?}"),
    }
}
