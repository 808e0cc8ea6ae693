//! The audit log under floods and its retention (issue 16, item 4; SPEC.md
//! §11.12): repeated refusals are counted into summary entries, refusals at
//! the HTTP level are audited in aggregate, and pruning keeps a signed
//! checkpoint from which `audit verify` still proves the rest of the chain.
//! On SQLite and PostgreSQL.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{gateway_takes, Backend, Db, Device};
use serde_json::Value;
use sqlx::Connection;
use vouch_backend::budget::Kind;
use vouch_backend::config::Config;
use vouch_backend::store::{now_ms, AuditFilter, AuditVerdict, NewAudit, PruneError};
use vouch_proto::keys::IdentityKey;
use vouch_proto::wire::backend::{
    decode_body, SessionEvent, SessionEventKind, SessionReport, SessionReportAnswer,
    SessionVerdict, VouchAnswer, VouchBatchAnswer, VouchBatchRequest, VouchRequest, CONTENT_TYPE,
};

on_both!(
    a_replay_flood_adds_a_few_entries_not_one_per_replay,
    http_refusals_are_audited_in_aggregate,
    prune_keeps_a_signed_checkpoint_and_verify_proves_the_rest,
    prune_keeps_the_entries_a_live_vouch_needs,
);

/// Every entry after `after_seq`.
async fn entries_after(b: &Backend, after_seq: i64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = after_seq;
    loop {
        let page = b
            .store
            .audit_query(&AuditFilter {
                after_seq: Some(after),
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("query");
        let Some(last) = page.last() else { break };
        after = last.seq;
        out.extend(page.iter().map(|e| serde_json::to_value(e).expect("json")));
    }
    out
}

async fn head_seq(b: &Backend) -> i64 {
    entries_after(b, 0)
        .await
        .last()
        .and_then(|e| e["seq"].as_i64())
        .unwrap_or(0)
}

/// The count of a summary entry (`repeated=N …`), if it is one.
fn repeated(e: &Value) -> Option<u64> {
    e["detail"]
        .as_str()?
        .strip_prefix("repeated=")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

async fn verify(b: &Backend) -> AuditVerdict {
    b.store
        .audit_verify(&b.state.checkpoint_key)
        .await
        .expect("verify")
}

/// A backend with a gateway and a device it may vouch for.
async fn setup(b: &Backend) -> (IdentityKey, Device) {
    let gw = IdentityKey::from_seed(&[100; 32]);
    b.enroll_gateway(&gw, None).await;
    b.allow("any", "any", "telemetry").await;
    let dev = Device::new(1);
    b.enroll_peripheral(&dev, None).await;
    (gw, dev)
}

async fn batch(b: &Backend, gw: &IdentityKey, items: Vec<VouchRequest>) -> Vec<VouchAnswer> {
    let (s, bytes) = b
        .gateway_post(
            &gw.public_key(),
            "/v1/vouch/batch",
            &VouchBatchRequest { items },
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    decode_body::<VouchBatchAnswer>(&bytes)
        .expect("answer")
        .items
}

/// One captured hello replayed 1,296 times (in batches and singly): the
/// first `audit.first_per_kind` refusals are written at once, the rest become
/// one summary entry, the chain stays intact, and metrics still count every
/// refusal. Before the change, every replay wrote its own entry.
async fn a_replay_flood_adds_a_few_entries_not_one_per_replay(db: Db) {
    let first = u64::from(Config::default().audit.first_per_kind);
    let b = Backend::new(&db).await;
    let (gw, dev) = setup(&b).await;
    let (_, hello) = dev.hello(&b.anchors().await, 1);
    let (_, req) = gateway_takes(&gw, &hello, 2);
    assert!(matches!(
        batch(&b, &gw, vec![req.clone()]).await[0],
        VouchAnswer::Vouched(_)
    ));
    let before = head_seq(&b).await;

    const BATCHES: usize = 20;
    const SINGLES: usize = 16;
    for _ in 0..BATCHES {
        let answers = batch(&b, &gw, vec![req.clone(); 64]).await;
        assert!(answers
            .iter()
            .all(|a| !matches!(a, VouchAnswer::Vouched(_))));
    }
    for _ in 0..SINGLES {
        let (s, bytes) = b.gateway_post(&gw.public_key(), "/v1/vouch", &req).await;
        assert_eq!(s, StatusCode::OK);
        let answer: VouchAnswer = decode_body(&bytes).expect("answer");
        assert!(!matches!(answer, VouchAnswer::Vouched(_)));
    }
    let replays = (BATCHES * 64 + SINGLES) as u64;

    // At once: the first replays, one entry each, and nothing else.
    let now = entries_after(&b, before).await;
    assert_eq!(now.len() as u64, first, "{now:#?}");
    for e in &now {
        assert_eq!(e["reason"], "replay");
        // A replay is refused before its hello is opened: it names no id.
        assert_eq!(e["peripheral"], Value::Null);
        assert_eq!(repeated(e), None);
    }

    // The summary: one ordinary chained entry with the count.
    assert_eq!(b.state.flush_audit().await.expect("flush"), 1);
    let added = entries_after(&b, before).await;
    assert_eq!(added.len() as u64, first + 1, "{added:#?}");
    let summary = &added[added.len() - 1];
    assert_eq!(summary["action"], "vouch");
    assert_eq!(summary["outcome"], "denied");
    assert_eq!(summary["reason"], "replay");
    assert_eq!(summary["gateway"], gw.public_key().to_string());
    assert_eq!(summary["peripheral"], Value::Null);
    assert_eq!(repeated(summary), Some(replays - first), "{summary}");
    assert!(matches!(verify(&b).await, AuditVerdict::Intact { .. }));
    let metrics = String::from_utf8(b.metrics().await).expect("utf8");
    assert!(
        metrics.contains(&format!(
            "vouch_refusals_total{{reason=\"replay\"}} {replays}"
        )),
        "{metrics}"
    );

    // The flood goes on: counted into the next summary, no entry at once.
    batch(&b, &gw, vec![req.clone(); 10]).await;
    let mut seen = first as usize + 1;
    assert_eq!(entries_after(&b, before).await.len(), seen);
    // Another kind (another claimed id) is written at once.
    let stranger = Device::new(2);
    let (_, h) = stranger.hello(&b.anchors().await, 3);
    batch(&b, &gw, vec![gateway_takes(&gw, &h, 4).1]).await;
    let added = entries_after(&b, before).await;
    seen += 1;
    assert_eq!(added.len(), seen);
    assert_eq!(added[seen - 1]["reason"], "unknown_peripheral");
    assert_eq!(b.state.flush_audit().await.expect("flush"), 1);
    let added = entries_after(&b, before).await;
    seen += 1;
    assert_eq!(added.len(), seen);
    assert_eq!(repeated(&added[seen - 1]), Some(10));
    // A kind quiet for a whole interval is forgotten: its next refusal is
    // written at once again.
    assert_eq!(b.state.flush_audit().await.expect("flush"), 0);
    assert_eq!(b.state.flush_audit().await.expect("flush"), 0);
    batch(&b, &gw, vec![req.clone()]).await;
    let added = entries_after(&b, before).await;
    seen += 1;
    assert_eq!(added.len(), seen);
    assert_eq!(added[seen - 1]["reason"], "replay");
    assert_eq!(repeated(&added[seen - 1]), None);
    assert!(matches!(verify(&b).await, AuditVerdict::Intact { .. }));
}

async fn http_refusals_are_audited_in_aggregate(db: Db) {
    let mut config = Config::default();
    config.limits.max_requests_per_gateway = 1;
    // One entry at once per kind, so that these few repeats are counted.
    config.audit.first_per_kind = 1;
    let b = Backend::with_config(&db, config).await;
    let (gw, _) = setup(&b).await;
    let before = head_seq(&b).await;

    // Admin calls with a wrong token.
    for _ in 0..5 {
        let req = Request::get("/v1/admin/peripherals")
            .header(header::AUTHORIZATION, "Bearer vouch_wrong")
            .body(Body::empty())
            .expect("request");
        assert_eq!(b.send_json(req).await.0, StatusCode::UNAUTHORIZED);
    }
    // Gateway routes without a client certificate.
    for _ in 0..3 {
        let (s, _, _) = b
            .raw(None, "POST", "/v1/vouch", Some(CONTENT_TYPE), vec![1])
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // An unknown gateway on the feed.
    let stranger = IdentityKey::from_seed(&[7; 32]).public_key();
    for _ in 0..2 {
        let (s, _, _) = b
            .raw(Some(stranger), "GET", "/v1/feed?wait_ms=0", None, vec![])
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    // Bodies that do not decode, are too large, or are not postcard.
    let key = gw.public_key();
    for _ in 0..4 {
        let (s, _, _) = b
            .raw(
                Some(key),
                "POST",
                "/v1/vouch",
                Some(CONTENT_TYPE),
                vec![1, 2, 3],
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }
    for _ in 0..2 {
        let (s, _, _) = b
            .raw(
                Some(key),
                "POST",
                "/v1/vouch",
                Some(CONTENT_TYPE),
                vec![0; 70 * 1024],
            )
            .await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    }
    let (s, _, _) = b
        .raw(Some(key), "POST", "/v1/vouch", Some("text/plain"), vec![1])
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A gateway over its budget (its one request in flight held here).
    let held = b
        .state
        .gateway_budgets
        .try_take(key, Kind::Requests)
        .expect("budget");
    for _ in 0..3 {
        let (s, _, _) = b
            .raw(Some(key), "POST", "/v1/vouch", Some(CONTENT_TYPE), vec![1])
            .await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    }
    drop(held);

    // One entry per kind at once …
    let kinds = [
        ("401", "unauthorized", None, "GET /v1/admin/peripherals", 5),
        (
            "401",
            "client_certificate_required",
            None,
            "POST /v1/vouch",
            3,
        ),
        ("403", "gateway_unknown", Some(stranger), "GET /v1/feed", 2),
        ("400", "malformed_body", Some(key), "POST /v1/vouch", 4),
        ("413", "body_too_large", Some(key), "POST /v1/vouch", 2),
        (
            "415",
            "unsupported_media_type",
            Some(key),
            "POST /v1/vouch",
            1,
        ),
        ("429", "gateway_busy", Some(key), "POST /v1/vouch", 3),
    ];
    let now = entries_after(&b, before).await;
    assert_eq!(now.len(), kinds.len(), "{now:#?}");
    let find = |entries: &[Value], outcome: &str, reason: &str, summary: bool| {
        entries
            .iter()
            .filter(|e| {
                e["action"] == "http_refused"
                    && e["outcome"] == outcome
                    && e["reason"] == reason
                    && repeated(e).is_some() == summary
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    for (outcome, reason, gateway, detail, _) in kinds {
        let e = find(&now, outcome, reason, false);
        assert_eq!(e.len(), 1, "{outcome} {reason}: {now:#?}");
        assert_eq!(e[0]["detail"], detail);
        match gateway {
            Some(g) => {
                assert_eq!(e[0]["gateway"], g.to_string());
                assert_eq!(e[0]["actor"], format!("gateway:{g}"));
            }
            None => {
                assert_eq!(e[0]["gateway"], Value::Null);
                assert_eq!(e[0]["actor"], "anonymous");
            }
        }
    }
    // … and the repeats in one summary each.
    b.state.flush_audit().await.expect("flush");
    let all = entries_after(&b, before).await;
    for (outcome, reason, _, _, n) in kinds {
        let s = find(&all, outcome, reason, true);
        if n == 1 {
            assert!(s.is_empty(), "{s:#?}");
        } else {
            assert_eq!(s.len(), 1, "{outcome} {reason}");
            assert_eq!(repeated(&s[0]), Some(n - 1));
        }
    }
    assert!(matches!(verify(&b).await, AuditVerdict::Intact { .. }));
}

/// Raw SQL on the test's database: the attacker who can write the database
/// but not the data directory.
async fn sql(b: &Backend, statement: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&b.db.url_for(b.dir.path()))
        .await
        .expect("connect");
    sqlx::query(statement)
        .execute(&mut conn)
        .await
        .expect("statement");
    conn.close().await.ok();
}

/// Appends `n` entries written at `at_ms`.
async fn append(b: &Backend, n: usize, at_ms: i64, what: &str) {
    let entries: Vec<NewAudit> = (0..n)
        .map(|i| NewAudit::new(what, "ok", "test").detail(&i.to_string()))
        .collect();
    let mut tx = b.store.begin_write().await.expect("write");
    tx.audit_many(&entries, at_ms).await.expect("append");
    tx.commit().await.expect("commit");
}

async fn prune_keeps_a_signed_checkpoint_and_verify_proves_the_rest(db: Db) {
    let b = Backend::new(&db).await;
    let key = &b.state.checkpoint_key;
    // More than one prune chunk (5,000 entries per transaction).
    append(&b, 6_000, now_ms(), "old").await;
    let last_old = head_seq(&b).await;

    // A prune refuses to delete entries that do not verify, and deletes
    // nothing (the broken entry is in its second chunk).
    let broken = last_old - 500;
    let original = detail_of(&b, broken).await;
    sql(
        &b,
        &format!("UPDATE audit_log SET detail = 'edited' WHERE seq = {broken}"),
    )
    .await;
    let cutoff = now_ms() + 1;
    match b.store.audit_prune(cutoff, key, "test").await {
        Err(PruneError::Broken { seq, .. }) => assert_eq!(seq, broken),
        other => panic!("pruned over a broken chain: {other:?}"),
    }
    assert_eq!(entries_after(&b, 0).await.len() as i64, last_old);
    sql(
        &b,
        &format!("UPDATE audit_log SET detail = '{original}' WHERE seq = {broken}"),
    )
    .await;

    // Prune everything written so far; the rest verifies from the checkpoint.
    let o = b
        .store
        .audit_prune(cutoff, key, "test")
        .await
        .expect("prune");
    assert_eq!(o.checkpoint_seq, last_old);
    assert_eq!(o.pruned, last_old);
    let left = entries_after(&b, 0).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["action"], "audit_prune");
    append(&b, 3, now_ms(), "new").await;
    match verify(&b).await {
        AuditVerdict::Intact {
            entries,
            pruned_through,
            ..
        } => {
            assert_eq!(pruned_through, Some(last_old));
            assert_eq!(entries, 4);
        }
        v => panic!("{v:?}"),
    }
    // Nothing more to prune before the same cutoff.
    let again = b
        .store
        .audit_prune(cutoff, key, "test")
        .await
        .expect("prune");
    assert_eq!(again.pruned, 0);

    // An entry after the checkpoint edited: broken there.
    let edited = last_old + 2;
    let original = detail_of(&b, edited).await;
    sql(
        &b,
        &format!("UPDATE audit_log SET detail = 'edited' WHERE seq = {edited}"),
    )
    .await;
    assert!(
        matches!(verify(&b).await, AuditVerdict::Broken { seq, .. } if seq == edited),
        "{:?}",
        verify(&b).await
    );
    sql(
        &b,
        &format!("UPDATE audit_log SET detail = '{original}' WHERE seq = {edited}"),
    )
    .await;
    assert!(matches!(verify(&b).await, AuditVerdict::Intact { .. }));

    // The checkpoint edited: moved back, moved forward, or re-hashed.
    for edit in [
        "UPDATE audit_checkpoint SET seq = seq - 1",
        "UPDATE audit_checkpoint SET at_ms = at_ms - 1",
        "UPDATE audit_checkpoint SET hash = CASE WHEN substr(hash, 1, 2) = '00' \
         THEN 'ff' || substr(hash, 3) ELSE '00' || substr(hash, 3) END",
    ] {
        let original = checkpoint_row(&b).await;
        sql(&b, edit).await;
        let v = verify(&b).await;
        assert!(
            matches!(&v, AuditVerdict::Broken { problem, .. } if problem.contains("checkpoint")),
            "{edit}: {v:?}"
        );
        restore_checkpoint(&b, &original).await;
        assert!(matches!(verify(&b).await, AuditVerdict::Intact { .. }));
    }
    // The checkpoint deleted: the chain starts at an entry that is not 1.
    sql(&b, "DELETE FROM audit_checkpoint").await;
    assert!(matches!(
        verify(&b).await,
        AuditVerdict::Broken { seq: 1, .. }
    ));
}

async fn detail_of(b: &Backend, seq: i64) -> String {
    let e = b
        .store
        .audit_query(&AuditFilter {
            after_seq: Some(seq - 1),
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(e[0].seq, seq);
    e[0].detail.clone()
}

async fn checkpoint_row(b: &Backend) -> (i64, String, i64) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&b.db.url_for(b.dir.path()))
        .await
        .expect("connect");
    let row: (i64, String, i64) =
        sqlx::query_as("SELECT seq, hash, at_ms FROM audit_checkpoint WHERE id = 1")
            .fetch_one(&mut conn)
            .await
            .expect("checkpoint");
    conn.close().await.ok();
    row
}

async fn restore_checkpoint(b: &Backend, row: &(i64, String, i64)) {
    sql(
        b,
        &format!(
            "UPDATE audit_checkpoint SET seq = {}, hash = '{}', at_ms = {}",
            row.0, row.1, row.2
        ),
    )
    .await;
}

/// A gateway's attach report is judged against the last vouch for it in the
/// audit log, for up to the vouch's lifetimes: a prune, however short the
/// age asked for, keeps that much.
async fn prune_keeps_the_entries_a_live_vouch_needs(db: Db) {
    let b = Backend::new(&db).await;
    let gw = IdentityKey::from_seed(&[100; 32]);
    b.enroll_gateway(&gw, None).await;
    let (s, v) = b
        .admin(
            "POST",
            "/v1/admin/policies",
            Some(serde_json::json!({
                "peripheral": "any", "gateway": "any", "scope": "telemetry",
                "session_s": 3600, "resumption_s": 3 * 86_400,
            })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let dev = Device::new(1);
    b.enroll_peripheral(&dev, None).await;
    let (_, hello) = dev.hello(&b.anchors().await, 1);
    let (_, req) = gateway_takes(&gw, &hello, 2);
    assert!(matches!(
        batch(&b, &gw, vec![req]).await[0],
        VouchAnswer::Vouched(_)
    ));

    // Two days later, asked to prune everything older than an hour: the
    // cutoff stays three days (plus the grace) back, so the vouch stays.
    let later = now_ms() + 2 * 86_400_000;
    let (cutoff, raised) = vouch_backend::audit::prune_cutoff(&b.store, 3600, later)
        .await
        .expect("cutoff");
    assert!(raised);
    assert_eq!(cutoff, later - 3 * 86_400_000 - 120_000);
    let o = b
        .store
        .audit_prune(cutoff, &b.state.checkpoint_key, "test")
        .await
        .expect("prune");
    assert_eq!(o.pruned, 0);
    assert_eq!(
        b.audit(&format!("peripheral={}&action=vouch", dev.id))
            .await
            .len(),
        1
    );
    // So the session it started is still accepted.
    let report = SessionReport {
        events: vec![SessionEvent {
            peripheral: dev.id,
            kind: SessionEventKind::Attached,
            session_id: [1; 8],
        }],
        times: Vec::new(),
    };
    let (s, bytes) = b
        .gateway_post(&gw.public_key(), "/v1/sessions", &report)
        .await;
    assert_eq!(s, StatusCode::OK);
    let answer: SessionReportAnswer = decode_body(&bytes).expect("answer");
    assert_eq!(answer.items, vec![SessionVerdict::Accepted]);

    // Four days later the vouch's lifetimes are over, and an age of an hour
    // prunes it (the floor is the longest lifetime, not forever).
    let much_later = now_ms() + 4 * 86_400_000;
    let (cutoff, _) = vouch_backend::audit::prune_cutoff(&b.store, 3600, much_later)
        .await
        .expect("cutoff");
    let o = b
        .store
        .audit_prune(cutoff, &b.state.checkpoint_key, "test")
        .await
        .expect("prune");
    assert!(o.pruned > 0);
    assert!(b
        .audit(&format!("peripheral={}&action=vouch", dev.id))
        .await
        .is_empty());
    assert!(matches!(verify(&b).await, AuditVerdict::Intact { .. }));
}
