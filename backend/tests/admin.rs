//! The admin API and the operations routes through the router: registry
//! lifecycle, pagination, policy, import, audit chain, OpenAPI, and bad input
//! to every endpoint (always a 4xx with a stable code, never a 500).

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{Backend, Db, Device};
use serde_json::{json, Value};
use vouch_proto::keys::IdentityKey;
use vouch_proto::wire::backend::{
    encode_body, VouchBatchRequest, VouchRequest, CONTENT_TYPE, MAX_BODY,
};

on_both!(
    lifecycle_pagination_and_policy,
    bulk_import_is_idempotent_with_per_row_errors,
    a_bulk_import_writes_what_enrolling_row_by_row_writes,
    audit_chain_detects_tampering,
    bad_input_gets_a_stable_4xx_code,
    non_canonical_public_keys_are_refused_at_enrollment_and_import,
    adding_a_rule_sends_no_policy_change_and_removing_one_does,
);

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

async fn lifecycle_pagination_and_policy(db: Db) {
    let b = Backend::new(&db).await;
    let mut ids = Vec::new();
    for i in 0..5u8 {
        let d = Device::new(i + 1);
        b.enroll_peripheral(&d, Some(if i % 2 == 0 { "even" } else { "odd" }))
            .await;
        ids.push(d.id.to_string());
    }
    ids.sort();
    // Cursor pagination visits every peripheral once, in id order.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let q = if after.is_empty() {
            String::new()
        } else {
            format!("&after={after}")
        };
        let (s, v) = b
            .admin("GET", &format!("/v1/admin/peripherals?limit=2{q}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        for p in v["items"].as_array().expect("items") {
            seen.push(p["id"].as_str().expect("id").to_owned());
        }
        match v["next_cursor"].as_str() {
            Some(c) => after = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let (_, v) = b
        .admin("GET", "/v1/admin/peripherals?group=even", None)
        .await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(3));

    // Lifecycle: suspend → reinstate → revoke; revoked is final.
    let id = &ids[0];
    for (action, status) in [
        ("suspend", "suspended"),
        ("reinstate", "active"),
        ("revoke", "revoked"),
    ] {
        let (s, v) = b
            .admin(
                "POST",
                &format!("/v1/admin/peripherals/{id}/{action}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{action}: {v}");
        assert_eq!(v["status"], status);
    }
    for action in ["reinstate", "suspend", "activate", "revoke"] {
        let (s, v) = b
            .admin(
                "POST",
                &format!("/v1/admin/peripherals/{id}/{action}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{action}");
        assert_eq!(code(&v), "invalid_transition");
    }
    let (_, v) = b
        .admin("GET", "/v1/admin/peripherals?status=revoked", None)
        .await;
    assert_eq!(v["items"][0]["id"].as_str(), Some(id.as_str()));

    // Gateways: enroll returns a certificate for the gateway's own key;
    // enrolling again is idempotent and issues a fresh certificate.
    let gw = IdentityKey::from_seed(&[50; 32]);
    let pem = b.enroll_gateway(&gw, Some("s1")).await;
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let (s, v) = b
        .admin(
            "POST",
            "/v1/admin/gateways",
            Some(json!({"public_key": gw.public_key().to_public_key_pem(), "name": "gw", "site": "s1"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["outcome"], "unchanged");
    let (_, v) = b
        .admin(
            "GET",
            &format!("/v1/admin/gateways/{}", gw.public_key()),
            None,
        )
        .await;
    assert_eq!(v["site"], "s1");
    let (_, v) = b.admin("GET", "/v1/admin/gateways?site=s1", None).await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));

    // Policy: add, list, remove.
    b.allow("group:even", "site:s1", "telemetry,app9").await;
    let (s, v) = b
        .admin(
            "POST",
            "/v1/admin/policies",
            Some(json!({"peripheral": "group:even", "gateway": "site:s1", "scope": "telemetry"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(code(&v), "policy_exists");
    let (_, v) = b.admin("GET", "/v1/admin/policies", None).await;
    let rules = v.as_array().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["scope"], 1 | (1 << 9));
    let rid = rules[0]["id"].as_i64().expect("id");
    let (s, _) = b
        .admin("DELETE", &format!("/v1/admin/policies/{rid}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = b
        .admin("DELETE", &format!("/v1/admin/policies/{rid}"), None)
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));

    // Every change is in the audit log, and the anchor bundle is served.
    let entries = b.audit("action=peripheral_revoke").await;
    assert_eq!(entries.len(), 1);
    let (_, v) = b.admin("GET", "/v1/admin/anchor", None).await;
    assert_eq!(v["format"], vouch_proto::anchor::BUNDLE_FORMAT);
    assert_eq!(v["anchor"]["kid"], 1);
}

async fn import(b: &Backend, format: &str, dry: bool, body: String) -> (StatusCode, Value) {
    let req = Request::post(format!(
        "/v1/admin/peripherals/import?format={format}&dry_run={dry}"
    ))
    .header(header::AUTHORIZATION, format!("Bearer {}", b.token))
    .header(header::CONTENT_TYPE, "text/plain")
    .body(Body::from(body))
    .expect("request");
    b.send_json(req).await
}

async fn bulk_import_is_idempotent_with_per_row_errors(db: Db) {
    let b = Backend::new(&db).await;
    let k = |i: u8| IdentityKey::from_seed(&[i; 32]).public_key();
    let csv = format!(
        "id,public_key,group,attributes\n,{},meters,fw=1;hw=2\n,{},meters,\nzz,{},meters,\n,{},,\n",
        k(1),
        k(2),
        k(3),
        k(4)
    );
    let (s, v) = import(&b, "csv", true, csv.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["summary"]["created"], 3);
    assert_eq!(v["summary"]["errors"], 1);
    assert_eq!(v["rows"][2]["error"]["code"], "invalid_id");
    let (_, listed) = b.admin("GET", "/v1/admin/peripherals", None).await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(0),
        "dry run wrote"
    );

    let (_, v) = import(&b, "csv", false, csv.clone()).await;
    assert_eq!(v["summary"]["created"], 3, "{v}");
    // Again: every good row is unchanged.
    let (_, v) = import(&b, "csv", false, csv).await;
    assert_eq!(v["summary"]["created"], 0);
    assert_eq!(v["summary"]["unchanged"], 3);
    // A conflicting row (same key, other group) is a per-row error; others go on.
    let nd = format!(
        "{{\"public_key\":\"{}\",\"group\":\"other\"}}\n{{\"public_key\":\"{}\"}}\n{{\"id\":\"0000000000000001\",\"public_key\":\"{}\"}}\n",
        k(1),
        k(5),
        k(2)
    );
    let (_, v) = import(&b, "ndjson", false, nd).await;
    assert_eq!(v["rows"][0]["error"]["code"], "peripheral_exists", "{v}");
    assert_eq!(v["rows"][1]["result"], "created");
    assert_eq!(v["rows"][2]["error"]["code"], "public_key_in_use");
    let (_, listed) = b.admin("GET", "/v1/admin/peripherals", None).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(4));
    let first = &listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| p["public_key"] == k(1).to_string())
        .cloned()
        .expect("row 1");
    assert_eq!(first["attributes"], json!({"fw": "1", "hw": "2"}));
}

/// A batch of new rows is enrolled in a few statements (a million-row
/// import is otherwise three round trips a row); what it writes is what
/// enrolling row by row writes. 70 rows in one batch (more than one
/// statement of each kind), some with attributes: every row created,
/// listed with its attributes, one audit entry each in row order, the
/// chain intact. A batch whose rows are not all plainly new (the same row
/// twice, a key twice under two ids, a row already enrolled) is judged row
/// by row, with the same per-row answers as before.
async fn a_bulk_import_writes_what_enrolling_row_by_row_writes(db: Db) {
    let b = Backend::new(&db).await;
    let k = |i: u8| IdentityKey::from_seed(&[i; 32]).public_key();
    let mut csv = String::from("public_key,group,attributes\n");
    for i in 1..=70u8 {
        let attrs = if i % 3 == 0 {
            format!("n={i};site=s{}", i % 5)
        } else {
            String::new()
        };
        csv.push_str(&format!("{},g{},{attrs}\n", k(i), i % 4));
    }
    let (s, v) = import(&b, "csv", false, csv).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["summary"]["created"], 70, "{v}");
    assert_eq!(v["summary"]["errors"], 0, "{v}");
    let (_, listed) = b
        .admin("GET", "/v1/admin/peripherals?limit=100", None)
        .await;
    let items = listed["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 70);
    for i in 1..=70u8 {
        let p = items
            .iter()
            .find(|p| p["public_key"] == k(i).to_string())
            .unwrap_or_else(|| panic!("row {i} listed"));
        assert_eq!(p["group"], format!("g{}", i % 4));
        assert_eq!(p["status"], "active");
        let want = if i % 3 == 0 {
            json!({"n": i.to_string(), "site": format!("s{}", i % 5)})
        } else {
            json!({})
        };
        assert_eq!(p["attributes"], want, "row {i}");
    }
    // One entry a row, in row order.
    let entries = b.audit("action=peripheral_enroll").await;
    let ids: Vec<String> = entries
        .iter()
        .map(|e| e["peripheral"].as_str().unwrap_or("").to_owned())
        .collect();
    let want: Vec<String> = (1..=70u8)
        .map(|i| vouch_proto::keys::PeripheralId::derive(&k(i)).to_string())
        .collect();
    assert_eq!(ids, want);
    let (_, v) = b.admin("GET", "/v1/admin/audit/verify", None).await;
    assert_eq!(v["result"], "intact", "{v}");

    // Not plainly new: the same new row twice, a new key under two ids, a
    // row already enrolled. Judged row by row.
    let nd = format!(
        "{{\"public_key\":\"{a}\"}}\n{{\"public_key\":\"{a}\"}}\n\
         {{\"id\":\"00000000000000aa\",\"public_key\":\"{c}\"}}\n\
         {{\"id\":\"00000000000000bb\",\"public_key\":\"{c}\"}}\n\
         {{\"public_key\":\"{d}\",\"group\":\"g1\"}}\n",
        a = k(101),
        c = k(102),
        d = k(1),
    );
    let (_, v) = import(&b, "ndjson", false, nd).await;
    let results: Vec<String> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| match r["error"]["code"].as_str() {
            Some(code) => code.to_owned(),
            None => r["result"].as_str().unwrap_or("").to_owned(),
        })
        .collect();
    assert_eq!(
        results,
        [
            "created",
            "unchanged",
            "created",
            "public_key_in_use",
            "unchanged"
        ],
        "{v}"
    );
    let (_, v) = b.admin("GET", "/v1/admin/audit/verify", None).await;
    assert_eq!(v["result"], "intact", "{v}");
}

/// SPEC.md §2.1: a key encoded with `y ≥ p` (`f2ff…ff7f`, y = p + 5, a
/// valid point once reduced) is refused with a clear error, for gateways and
/// peripherals, one by one and in a bulk import, where it is that row's
/// error and the other rows are imported (issue 16).
async fn non_canonical_public_keys_are_refused_at_enrollment_and_import(db: Db) {
    let b = Backend::new(&db).await;
    let odd = format!("f2{}7f", "ff".repeat(30));
    for path in ["/v1/admin/peripherals", "/v1/admin/gateways"] {
        let (s, v) = b
            .admin("POST", path, Some(json!({ "public_key": odd })))
            .await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::BAD_REQUEST, "invalid_public_key"),
            "{path}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("not canonically encoded"),
            "{path}: {message}"
        );
    }
    let good = IdentityKey::from_seed(&[9; 32]).public_key();
    let (s, v) = import(&b, "csv", false, format!("public_key\n{odd}\n{good}\n")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rows"][0]["error"]["code"], "invalid_public_key", "{v}");
    assert_eq!(v["summary"]["created"], 1, "{v}");
    let (_, listed) = b.admin("GET", "/v1/admin/peripherals", None).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["items"][0]["public_key"], good.to_string());
    let (_, gateways) = b.admin("GET", "/v1/admin/gateways", None).await;
    assert_eq!(
        gateways["items"].as_array().map(Vec::len),
        Some(0),
        "{gateways}"
    );
}

async fn audit_chain_detects_tampering(db: Db) {
    let b = Backend::new(&db).await;
    for i in 0..4u8 {
        b.enroll_peripheral(&Device::new(i + 1), None).await;
    }
    // The backend's start registered its key ring (seq 1) and made the init
    // token the first admin's (seq 2); the enrollments follow (seq 3 to 6).
    let (_, v) = b.admin("GET", "/v1/admin/audit/verify", None).await;
    assert_eq!(
        v,
        json!({"result": "intact", "entries": 6, "head": v["head"]})
    );
    assert_eq!(b.audit("action=backend_key_genesis").await.len(), 1);
    assert_eq!(b.audit("action=operator_add").await.len(), 1);
    // Time-range queries.
    let all = b.audit("since=0").await;
    assert_eq!(all.len(), 6);
    let until = all[1]["at_ms"].as_i64().expect("at") + 1;
    assert!(b.audit(&format!("until={until}")).await.len() >= 2);
    assert!(b.audit("since=2999-01-01T00:00:00Z").await.is_empty());

    // Edit an entry behind the service's back.
    use sqlx::Connection;
    let url = db.url_for(b.dir.path());
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
    sqlx::query("UPDATE audit_log SET detail = 'status=pending' WHERE seq = 3")
        .execute(&mut conn)
        .await
        .expect("tamper");
    let (_, v) = b.admin("GET", "/v1/admin/audit/verify", None).await;
    assert_eq!(v["result"], "broken", "{v}");
    assert_eq!(v["seq"], 3);
    // Restore it, then drop the tail: the head no longer matches.
    sqlx::query("UPDATE audit_log SET detail = 'status=active' WHERE seq = 3")
        .execute(&mut conn)
        .await
        .expect("restore");
    let (_, v) = b.admin("GET", "/v1/admin/audit/verify", None).await;
    assert_eq!(v["result"], "intact", "{v}");
    sqlx::query("DELETE FROM audit_log WHERE seq = 6")
        .execute(&mut conn)
        .await
        .expect("truncate");
    let (_, v) = b.admin("GET", "/v1/admin/audit/verify", None).await;
    assert_eq!(v["result"], "broken", "{v}");
    assert_eq!(v["seq"], 6);
    // A hole in the middle.
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(&mut conn)
        .await
        .expect("hole");
    let (_, v) = b.admin("GET", "/v1/admin/audit/verify", None).await;
    assert_eq!(v["seq"], 3, "{v}");
    conn.close().await.ok();
}

async fn bad_input_gets_a_stable_4xx_code(db: Db) {
    let b = Backend::new(&db).await;
    let gw = IdentityKey::from_seed(&[100; 32]);
    b.enroll_gateway(&gw, None).await;
    let dev = Device::new(1);
    b.enroll_peripheral(&dev, None).await;
    let key = Some(gw.public_key());
    let good = encode_body(&VouchRequest {
        hello: vec![1, 2, 3],
        gateway_ephemeral: vouch_proto::keys::DhPublic([1; 32]),
    });

    // Gateway API.
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        Option<_>,
        &str,
        &str,
        Option<&str>,
        Vec<u8>,
        StatusCode,
        &str,
    )> = vec![
        (
            None,
            "POST",
            "/v1/vouch",
            Some(CONTENT_TYPE),
            good.clone(),
            StatusCode::UNAUTHORIZED,
            "client_certificate_required",
        ),
        (
            key,
            "POST",
            "/v1/vouch",
            Some("application/json"),
            good.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            key,
            "POST",
            "/v1/vouch",
            None,
            good.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            key,
            "POST",
            "/v1/vouch",
            Some(CONTENT_TYPE),
            vec![],
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            key,
            "POST",
            "/v1/vouch",
            Some(CONTENT_TYPE),
            vec![2, 0],
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            key,
            "POST",
            "/v1/vouch",
            Some(CONTENT_TYPE),
            [good.clone(), vec![0]].concat(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            key,
            "POST",
            "/v1/vouch",
            Some(CONTENT_TYPE),
            vec![1; MAX_BODY + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            key,
            "POST",
            "/v1/vouch/batch",
            Some(CONTENT_TYPE),
            vec![1; 10 * MAX_BODY],
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            key,
            "POST",
            "/v1/vouch/batch",
            Some(CONTENT_TYPE),
            encode_body(&VouchBatchRequest {
                items: vec![
                    VouchRequest {
                        hello: vec![],
                        gateway_ephemeral: vouch_proto::keys::DhPublic([0; 32])
                    };
                    65
                ],
            }),
            StatusCode::BAD_REQUEST,
            "batch_too_large",
        ),
        (
            key,
            "POST",
            "/v1/sessions",
            Some(CONTENT_TYPE),
            vec![1, 1, 0, 0],
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            key,
            "GET",
            "/v1/feed?after=-1",
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            key,
            "GET",
            "/v1/feed?after=x",
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            None,
            "GET",
            "/v1/feed",
            None,
            vec![],
            StatusCode::UNAUTHORIZED,
            "client_certificate_required",
        ),
        (
            Some(IdentityKey::from_seed(&[1; 32]).public_key()),
            "GET",
            "/v1/feed",
            None,
            vec![],
            StatusCode::FORBIDDEN,
            "gateway_unknown",
        ),
        (
            key,
            "GET",
            "/v1/vouch",
            None,
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            key,
            "GET",
            "/v1/nothing",
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (i, (id, method, path, ct, body, status, want)) in cases.into_iter().enumerate() {
        let (s, got_ct, bytes) = b.raw(id, method, path, ct, body).await;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!((s, code(&v)), (status, want), "case {i}: {method} {path}");
        assert!(got_ct.starts_with("application/json"), "case {i}");
    }

    // Admin API: authentication.
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Basic abc"),
        Some("Bearer "),
    ] {
        let mut req = Request::get("/v1/admin/peripherals");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let (s, v) = b.send_json(req.body(Body::empty()).expect("req")).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{auth:?}"
        );
    }

    // Admin API: bodies, ids, keys, duplicates.
    let pk = dev.key.public_key().to_string();
    let other = IdentityKey::from_seed(&[2; 32]).public_key().to_string();
    let json_cases: Vec<(&str, String, Option<Value>, StatusCode, &str)> = vec![
        (
            "POST",
            "/v1/admin/peripherals".into(),
            Some(json!({"public_key": "abc"})),
            StatusCode::BAD_REQUEST,
            "invalid_public_key",
        ),
        (
            "POST",
            "/v1/admin/peripherals".into(),
            Some(json!({"public_key": "00".repeat(32)})),
            StatusCode::BAD_REQUEST,
            "invalid_public_key",
        ),
        (
            "POST",
            "/v1/admin/peripherals".into(),
            Some(
                json!({"public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_public_key",
        ),
        (
            "POST",
            "/v1/admin/peripherals".into(),
            Some(json!({"public_key": other, "id": "xyz"})),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "POST",
            "/v1/admin/peripherals".into(),
            Some(json!({"public_key": other, "group": "a\nb"})),
            StatusCode::BAD_REQUEST,
            "invalid_group",
        ),
        (
            "POST",
            "/v1/admin/peripherals".into(),
            Some(json!({"public_key": other, "status": "revoked"})),
            StatusCode::BAD_REQUEST,
            "invalid_status",
        ),
        (
            "POST",
            "/v1/admin/peripherals".into(),
            Some(json!({"public_key": other, "colour": "red"})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/admin/peripherals".into(),
            Some(json!({"public_key": 5})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/admin/peripherals".into(),
            Some(json!({"public_key": pk, "model": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/admin/peripherals".into(),
            Some(json!({"public_key": pk, "attributes": {"model": "m1"}})),
            StatusCode::OK,
            "",
        ),
        (
            "POST",
            "/v1/admin/peripherals".into(),
            Some(json!({"public_key": pk, "group": "g"})),
            StatusCode::CONFLICT,
            "peripheral_exists",
        ),
        (
            "POST",
            "/v1/admin/peripherals".into(),
            Some(json!({"public_key": pk, "id": "0000000000000001"})),
            StatusCode::CONFLICT,
            "public_key_in_use",
        ),
        (
            "GET",
            format!("/v1/admin/peripherals/{}", "ab".repeat(8)),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "GET",
            "/v1/admin/peripherals/nothex".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "GET",
            "/v1/admin/peripherals?status=bogus".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_status",
        ),
        (
            "GET",
            "/v1/admin/peripherals?limit=-3".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/admin/peripherals?after=zz".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "GET",
            "/v1/admin/peripherals?bogus=1".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "POST",
            format!("/v1/admin/peripherals/{}/explode", dev.id),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "POST",
            format!("/v1/admin/peripherals/{}/revoke", "ab".repeat(8)),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "POST",
            "/v1/admin/gateways".into(),
            Some(json!({"public_key": "zz"})),
            StatusCode::BAD_REQUEST,
            "invalid_public_key",
        ),
        (
            "POST",
            "/v1/admin/gateways".into(),
            Some(json!({"public_key": gw.public_key().to_string(), "name": "other"})),
            StatusCode::CONFLICT,
            "gateway_exists",
        ),
        (
            "GET",
            "/v1/admin/gateways/abc".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_public_key",
        ),
        (
            "GET",
            format!("/v1/admin/gateways/{other}"),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "POST",
            format!("/v1/admin/gateways/{other}/suspend"),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "POST",
            "/v1/admin/policies".into(),
            Some(json!({"peripheral": "any", "gateway": "any", "scope": "everything"})),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "POST",
            "/v1/admin/policies".into(),
            Some(json!({"peripheral": "any", "gateway": "any", "scope": "4"})),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "POST",
            "/v1/admin/policies".into(),
            Some(json!({"peripheral": "device:1", "gateway": "any", "scope": "telemetry"})),
            StatusCode::BAD_REQUEST,
            "invalid_selector",
        ),
        (
            "POST",
            "/v1/admin/policies".into(),
            Some(json!({"peripheral": "any", "gateway": "gateway:xx", "scope": "telemetry"})),
            StatusCode::BAD_REQUEST,
            "invalid_selector",
        ),
        (
            "POST",
            "/v1/admin/policies".into(),
            Some(
                json!({"peripheral": "any", "gateway": "any", "scope": "telemetry", "session_s": 0}),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_lifetime",
        ),
        (
            "POST",
            "/v1/admin/policies".into(),
            Some(
                json!({"peripheral": "any", "gateway": "any", "scope": "telemetry", "session_s": -1}),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "DELETE",
            "/v1/admin/policies/abc".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "GET",
            "/v1/admin/audit?since=yesterday".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_time",
        ),
        (
            "GET",
            "/v1/admin/audit?peripheral=zz".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "DELETE",
            "/v1/admin/lockouts/gateway:none".into(),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "POST",
            "/v1/admin/peripherals/import".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "POST",
            "/v1/admin/peripherals/import?format=xml".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
    ];
    for (i, (method, path, body, status, want)) in json_cases.into_iter().enumerate() {
        let (s, v) = b.admin(method, &path, body).await;
        assert_eq!(s, status, "case {i}: {method} {path}: {v}");
        if !want.is_empty() {
            assert_eq!(code(&v), want, "case {i}: {method} {path}: {v}");
            assert!(v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
    }

    // Raw admin bodies: not JSON, wrong content type, too large.
    let raw_cases: Vec<(Option<&str>, Vec<u8>, StatusCode, &str)> = vec![
        (
            Some("application/json"),
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            Some("application/json"),
            vec![0xff, 0xfe],
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            Some("text/plain"),
            b"{}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            None,
            b"{}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Some("application/json"),
            vec![b' '; vouch_backend::routes::MAX_ADMIN_BODY + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (i, (ct, body, status, want)) in raw_cases.into_iter().enumerate() {
        let mut req = Request::post("/v1/admin/peripherals")
            .header(header::AUTHORIZATION, format!("Bearer {}", b.token));
        if let Some(ct) = ct {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let (s, v) = b.send_json(req.body(Body::from(body)).expect("req")).await;
        assert_eq!((s, code(&v)), (status, want), "raw case {i}");
    }

    // The OpenAPI document lists exactly the served routes, and each of them
    // is routed (answers something other than "no such route").
    let (s, doc) = b.admin("GET", "/v1/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let mut n = 0;
    for (path, ops) in paths {
        for (method, _) in ops.as_object().expect("ops") {
            n += 1;
            let concrete = path
                .replace("{id}", &dev.id.to_string())
                .replace("{key}", &gw.public_key().to_string())
                .replace("{action}", "suspend")
                .replace("{subject}", "gateway:x");
            let (s, v) = b
                .send_json(
                    Request::builder()
                        .method(method.to_uppercase().as_str())
                        .uri(&concrete)
                        .body(Body::empty())
                        .expect("req"),
                )
                .await;
            assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                !(s == StatusCode::NOT_FOUND && v["error"]["message"] == "route not found"),
                "{method} {path} is documented but not routed"
            );
        }
    }
    assert_eq!(n, vouch_backend::openapi::ROUTES.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_503_not_queued() {
    let mut config = vouch_backend::config::Config::default();
    config.limits.max_concurrent_requests = 4;
    let b = Backend::with_config(&Db::Sqlite, config).await;
    // Occupy every request slot, as four slow requests in flight would.
    let held = b
        .state
        .request_slots
        .clone()
        .acquire_many_owned(4)
        .await
        .expect("permits");
    // The operator is still served (the admin API has a budget of its own:
    // a revoke must get through a storm that fills the gateways').
    let req = Request::get("/v1/admin/peripherals")
        .header(header::AUTHORIZATION, format!("Bearer {}", b.token))
        .body(Body::empty())
        .expect("req");
    let res = tower::ServiceExt::oneshot(b.router.clone(), req)
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::OK);
    let (s, _, body) = b
        .raw(
            Some(IdentityKey::from_seed(&[1; 32]).public_key()),
            "POST",
            "/v1/vouch",
            Some(CONTENT_TYPE),
            vec![1],
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        code(&serde_json::from_slice(&body).unwrap_or(Value::Null)),
        "overloaded"
    );
    // Operations routes stay up.
    let (s, _, _) = b.raw(None, "GET", "/healthz", None, vec![]).await;
    assert_eq!(s, StatusCode::OK);
    drop(held);
    let (s, _) = b.admin("GET", "/v1/admin/peripherals", None).await;
    assert_eq!(s, StatusCode::OK);
    let m = b.metrics().await;
    // One shed: the vouch (the admin request had room in its own budget).
    assert!(String::from_utf8_lossy(&m).contains("vouch_overload_total{kind=\"shed\"} 1"));
}

/// Gateways close every session on `policy_changed` (SPEC.md §10.5), so the
/// backend sends it only when a grant may shrink: when a rule is removed. A
/// grant is the union of the matching rules, so adding one never does.
async fn adding_a_rule_sends_no_policy_change_and_removing_one_does(db: Db) {
    let b = Backend::new(&db).await;
    let changes = |events: Vec<vouch_backend::store::EventRow>| {
        events.iter().filter(|e| e.kind == "policy_changed").count()
    };
    b.allow("any", "any", "telemetry").await;
    b.allow("group:meters", "site:plant-1", "telemetry,command")
        .await;
    assert_eq!(
        changes(b.store.events_after(0, 100).await.expect("events")),
        0
    );
    let (s, v) = b.admin("GET", "/v1/admin/policies", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id = v["items"][0]["id"]
        .as_i64()
        .or_else(|| v[0]["id"].as_i64())
        .expect("a rule id");
    let (s, _) = b
        .admin("DELETE", &format!("/v1/admin/policies/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        changes(b.store.events_after(0, 100).await.expect("events")),
        1
    );
}

/// Captured log output.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Issue 19: an admin action that changed something is logged at INFO
/// (method, path, status); reads and refused requests are not actions.
#[tokio::test]
async fn admin_actions_are_logged_at_info() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let b = Backend::new(&Db::Sqlite).await;
    let d = Device::new(9);
    b.enroll_peripheral(&d, None).await;
    let suspend = format!("/v1/admin/peripherals/{}/suspend", d.id);
    assert_eq!(b.admin("POST", &suspend, None).await.0, StatusCode::OK);
    assert_eq!(
        b.admin("GET", "/v1/admin/peripherals", None).await.0,
        StatusCode::OK
    );
    let (refused, _) = b.admin("POST", &suspend, None).await;
    assert!(refused.is_client_error(), "suspending twice is refused");
    let text = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8");
    let actions: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("admin action"))
        .collect();
    assert_eq!(actions.len(), 2, "{text}");
    assert!(actions.iter().all(|l| l.contains(" INFO ")), "{actions:?}");
    assert!(
        actions[0].contains("path=/v1/admin/peripherals"),
        "{actions:?}"
    );
    assert!(
        actions[1].contains(&format!("path={suspend}")),
        "{actions:?}"
    );
}
