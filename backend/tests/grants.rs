//! Attach reports are authorized from the grants stored with each vouch
//! (issue 17), not from the text of its audit entry; grants from before the
//! migration that stores them are backfilled from the audit log. On SQLite
//! and PostgreSQL.

mod common;

use axum::http::StatusCode;
use common::{gateway_takes, Backend, Db, Device};
use sqlx::Connection;
use vouch_backend::store::{now_ms, AuditVerdict, CheckpointKey, Grant, Store, StoredGrant};
use vouch_proto::keys::IdentityKey;
use vouch_proto::wire::backend::{
    decode_body, SessionEvent, SessionEventKind, SessionReport, SessionReportAnswer,
    SessionVerdict, VouchAnswer,
};
use vouch_proto::wire::Lifetimes;

on_both!(
    an_attach_is_authorized_from_the_stored_grant,
    grants_from_before_the_migration_are_backfilled_from_the_audit_log,
);

async fn attach(b: &Backend, gw: &IdentityKey, dev: &Device, session: u8) -> SessionVerdict {
    let (s, bytes) = b
        .gateway_post(
            &gw.public_key(),
            "/v1/sessions",
            &SessionReport {
                events: vec![SessionEvent {
                    peripheral: dev.id,
                    kind: SessionEventKind::Attached,
                    session_id: [session; 8],
                }],
                times: Vec::new(),
            },
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    decode_body::<SessionReportAnswer>(&bytes)
        .expect("decodes")
        .items[0]
}

async fn record(b: &Backend, grant: Grant, at_ms: i64) {
    let mut tx = b.store.begin_write().await.expect("begin");
    tx.record_grants(&[(1, grant)], at_ms).await.expect("grant");
    tx.commit().await.expect("commit");
}

/// A grant written straight into the store, with no vouch and no audit
/// entry behind it, authorizes the attach; one whose lifetimes ran out
/// does not.
async fn an_attach_is_authorized_from_the_stored_grant(db: Db) {
    let b = Backend::new(&db).await;
    let gw = IdentityKey::from_seed(&[100; 32]);
    b.enroll_gateway(&gw, None).await;
    b.allow("any", "any", "telemetry").await;
    let (fresh, stale) = (Device::new(1), Device::new(2));
    b.enroll_peripheral(&fresh, None).await;
    b.enroll_peripheral(&stale, None).await;
    assert_eq!(attach(&b, &gw, &fresh, 1).await, SessionVerdict::Refused);

    let lifetimes = Lifetimes {
        session_s: 60,
        resumption_s: 120,
    };
    let grant = |dev: &Device| Grant {
        peripheral: dev.id,
        gateway: gw.public_key(),
        lifetimes,
        kid: vouch_proto::keys::KeyId(1),
    };
    record(&b, grant(&fresh), now_ms()).await;
    // 120 s of resumption and 120 s of grace ran out a second ago.
    record(&b, grant(&stale), now_ms() - 241_000).await;
    assert_eq!(attach(&b, &gw, &fresh, 2).await, SessionVerdict::Accepted);
    assert_eq!(attach(&b, &gw, &stale, 3).await, SessionVerdict::Refused);
    let reasons: Vec<String> = b
        .audit("action=session_attach")
        .await
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(reasons, ["not_vouched", "", "not_vouched"]);
}

/// A vouch stores its grant; a database migrated before grants were stored
/// gets them from the audit log, authorizes the same attach, and its audit
/// chain still verifies.
async fn grants_from_before_the_migration_are_backfilled_from_the_audit_log(db: Db) {
    let b = Backend::new(&db).await;
    let anchors = b.anchors().await;
    let gw = IdentityKey::from_seed(&[100; 32]);
    b.enroll_gateway(&gw, None).await;
    b.allow("any", "any", "telemetry").await;
    let dev = Device::new(1);
    b.enroll_peripheral(&dev, None).await;
    let (_, hello) = dev.hello(&anchors, 1);
    let (_, req) = gateway_takes(&gw, &hello, 2);
    let (s, bytes) = b.gateway_post(&gw.public_key(), "/v1/vouch", &req).await;
    assert_eq!(s, StatusCode::OK);
    assert!(matches!(
        decode_body::<VouchAnswer>(&bytes),
        Ok(VouchAnswer::Vouched(_))
    ));
    let stored = b
        .store
        .last_grant(&dev.id, &gw.public_key())
        .await
        .expect("read")
        .expect("the vouch stored its grant");
    assert_eq!(
        stored.lifetimes,
        Lifetimes {
            session_s: 3600,
            resumption_s: 86_400
        }
    );

    // Back to the schema before migration 8, then migrate again.
    let url = b.db.url_for(b.dir.path());
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
    for sql in [
        "DROP TABLE vouch_grants",
        "DELETE FROM _sqlx_migrations WHERE version = 8",
        "CREATE INDEX audit_log_vouches ON audit_log (peripheral_id, gateway_key, seq) \
         WHERE action = 'vouch' AND outcome = 'vouched'",
    ] {
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
    conn.close().await.expect("close");
    let migrated = Store::open(&url).await.expect("migrates");
    let backfilled: Option<StoredGrant> = migrated
        .last_grant(&dev.id, &gw.public_key())
        .await
        .expect("read");
    assert_eq!(backfilled, Some(stored));
    migrated.close().await;

    assert_eq!(attach(&b, &gw, &dev, 1).await, SessionVerdict::Accepted);
    let key = CheckpointKey::from_ca(&b.state.ca).expect("ca key");
    assert!(matches!(
        b.store.audit_verify(&key).await.expect("verify"),
        AuditVerdict::Intact { .. }
    ));
}
