//! Named operators with roles (issue 18): every admin route refuses a token
//! below the role it needs with 403 `forbidden`; audit entries name the
//! operator; tokens are stored as hashes only, rotate and revoke at once;
//! removed operators and revoked tokens are 401; hostile names are 400.

mod common;

use axum::http::StatusCode;
use common::{Backend, Db, Device};
use serde_json::{json, Value};
use sqlx::Row;
use vouch_backend::access::Role;
use vouch_backend::openapi::{Auth, Route, ROUTES};

on_both!(
    every_admin_route_refuses_a_role_below_its_own,
    audit_entries_name_the_operator_who_acted,
    tokens_are_hashes_and_rotate_revoke_and_removal_take_effect_at_once,
    the_init_token_is_the_first_admin_and_the_last_admin_stays,
    hostile_operator_input_is_a_clear_4xx,
);

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

/// Adds an operator with the init token; returns its token.
async fn add(b: &Backend, name: &str, role: &str) -> String {
    let (s, v) = b
        .admin(
            "POST",
            "/v1/admin/operators",
            Some(json!({ "name": name, "role": role })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["operator"]["role"], role);
    v["token"]["token"].as_str().expect("token").to_owned()
}

async fn every_admin_route_refuses_a_role_below_its_own(db: Db) {
    let b = Backend::new(&db).await;
    let tokens = [
        (Role::Viewer, add(&b, "vera", "viewer").await),
        (Role::Operator, add(&b, "otto", "operator").await),
        (Role::Admin, add(&b, "ada", "admin").await),
    ];
    let mut checked = 0;
    for &Route {
        method, path, auth, ..
    } in ROUTES
    {
        let Auth::Role(need) = auth else { continue };
        // Placeholders get values that name nothing: a request the role
        // allows fails later (400/404), never with a side effect.
        let path = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "zz" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let body = (method == "post").then(|| json!({}));
        for (role, token) in &tokens {
            let (s, v) = b
                .admin_as(token, &method.to_uppercase(), &path, body.clone())
                .await;
            if *role < need {
                assert_eq!(s, StatusCode::FORBIDDEN, "{role} {method} {path}: {v}");
                assert_eq!(code(&v), "forbidden", "{role} {method} {path}");
            } else {
                assert_ne!(code(&v), "forbidden", "{role} {method} {path}: {v}");
                assert_ne!(s, StatusCode::UNAUTHORIZED, "{role} {method} {path}: {v}");
                assert!(!s.is_server_error(), "{role} {method} {path}: {s} {v}");
            }
            checked += 1;
        }
        // No token, or a token that is not one: 401 before anything else.
        let (s, v) = b
            .admin_as("vouch_nope", &method.to_uppercase(), &path, body.clone())
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}: {v}");
        assert_eq!(code(&v), "unauthorized");
    }
    // Every write route of the registry needs at least an operator, and
    // operator management an admin: the table says so, and it is the table
    // the router is checked against (tests/admin.rs).
    let need = |m: &str, p: &str| {
        ROUTES
            .iter()
            .find(|r| r.method == m && r.path == p)
            .map(|r| r.auth)
            .expect("route")
    };
    assert_eq!(
        need("post", "/v1/admin/peripherals/{id}/{action}"),
        Auth::Role(Role::Operator)
    );
    assert_eq!(need("post", "/v1/admin/operators"), Auth::Role(Role::Admin));
    assert_eq!(
        need("delete", "/v1/admin/policies/{id}"),
        Auth::Role(Role::Admin)
    );
    assert_eq!(need("get", "/metrics"), Auth::Role(Role::Viewer));
    assert!(checked >= 3 * 25, "{checked}");
}

async fn audit_entries_name_the_operator_who_acted(db: Db) {
    let b = Backend::new(&db).await;
    let otto = add(&b, "otto", "operator").await;
    let vera = add(&b, "vera", "viewer").await;
    let d = Device::new(7);
    let body = json!({ "public_key": d.key.public_key().to_string() });
    // The viewer is refused the write, and nothing is written.
    let (s, v) = b
        .admin_as(&vera, "POST", "/v1/admin/peripherals", Some(body.clone()))
        .await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
    let (s, _) = b
        .admin("GET", &format!("/v1/admin/peripherals/{}", d.id), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The operator may; the audit entry names it.
    let (s, v) = b
        .admin_as(&otto, "POST", "/v1/admin/peripherals", Some(body))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = b
        .admin_as(
            &otto,
            "POST",
            &format!("/v1/admin/peripherals/{}/suspend", d.id),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let entries = b.audit(&format!("peripheral={}", d.id)).await;
    let actors: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default(),
                e["actor"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        actors
            .iter()
            .any(|(a, o)| a.contains("enroll") && *o == "operator:otto"),
        "{actors:?}"
    );
    assert!(
        actors
            .iter()
            .any(|(a, o)| a.contains("suspend") && *o == "operator:otto"),
        "{actors:?}"
    );
    // Adding the operators was the init admin's doing.
    let added = b.audit("action=operator_add").await;
    let by: Vec<&str> = added
        .iter()
        .map(|e| e["actor"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        by,
        ["init", "operator:admin", "operator:admin"],
        "{added:?}"
    );
}

async fn tokens_are_hashes_and_rotate_revoke_and_removal_take_effect_at_once(db: Db) {
    let b = Backend::new(&db).await;
    let otto = add(&b, "otto", "operator").await;
    let (s, me) = b.admin_as(&otto, "GET", "/v1/admin/whoami", None).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("otto"), Some("operator"))
    );
    let first_id = me["token_id"].as_str().expect("id").to_owned();

    // Stored: the hash, never the token; listed: neither.
    let pool = sqlx::AnyPool::connect(&b.db.url_for(b.dir.path()))
        .await
        .expect("database");
    let rows = sqlx::query("SELECT id, hash FROM operator_tokens")
        .fetch_all(&pool)
        .await
        .expect("tokens");
    pool.close().await;
    let secret = otto.rsplit('_').next().expect("secret");
    for r in &rows {
        let hash: String = r.try_get("hash").expect("hash");
        assert!(!hash.contains(secret) && hash.len() == 64, "{hash}");
    }
    let (_, listed) = b.admin("GET", "/v1/admin/tokens?operator=otto", None).await;
    assert!(!listed.to_string().contains(secret), "{listed}");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // A second token; rotating the first stops it at once.
    let (s, second) = b
        .admin(
            "POST",
            "/v1/admin/tokens",
            Some(json!({ "operator": "otto" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{second}");
    let second = second["token"].as_str().expect("token").to_owned();
    let (s, rotated) = b
        .admin("POST", &format!("/v1/admin/tokens/{first_id}/rotate"), None)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rotated}");
    assert_eq!(rotated["operator"], "otto");
    let third = rotated["token"].as_str().expect("token").to_owned();
    let whoami = |t: String| {
        let b = &b;
        async move { b.admin_as(&t, "GET", "/v1/admin/whoami", None).await.0 }
    };
    assert_eq!(whoami(otto.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(whoami(third.clone()).await, StatusCode::OK);
    assert_eq!(whoami(second.clone()).await, StatusCode::OK);
    // Rotating or revoking a revoked token: 404, nothing changes.
    let (s, v) = b
        .admin("POST", &format!("/v1/admin/tokens/{first_id}/rotate"), None)
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");

    // Revoking the second: it stops, the third goes on.
    let second_id = second.split('_').nth(1).expect("id").to_owned();
    let (s, v) = b
        .admin("DELETE", &format!("/v1/admin/tokens/{second_id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(whoami(second).await, StatusCode::UNAUTHORIZED);
    assert_eq!(whoami(third.clone()).await, StatusCode::OK);

    // Removing the operator stops every token of it; its name stays taken.
    let (s, v) = b.admin("DELETE", "/v1/admin/operators/otto", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(whoami(third).await, StatusCode::UNAUTHORIZED);
    let (s, v) = b
        .admin(
            "POST",
            "/v1/admin/operators",
            Some(json!({ "name": "otto", "role": "admin" })),
        )
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "operator_exists"),
        "{v}"
    );
    let (s, v) = b
        .admin(
            "POST",
            "/v1/admin/tokens",
            Some(json!({ "operator": "otto" })),
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");
}

async fn the_init_token_is_the_first_admin_and_the_last_admin_stays(db: Db) {
    let b = Backend::new(&db).await;
    let (s, me) = b.admin("GET", "/v1/admin/whoami", None).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(
        me,
        json!({ "name": "admin", "role": "admin", "token_id": "init" })
    );
    // The only admin cannot be removed, nor its only token revoked (it may
    // be rotated).
    let (s, v) = b.admin("DELETE", "/v1/admin/operators/admin", None).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
    let (s, v) = b.admin("DELETE", "/v1/admin/tokens/init", None).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
    // Another admin can remove it; then the init token is dead, and a
    // restart (which bootstraps only an empty table) does not revive it.
    let ada = add(&b, "ada", "admin").await;
    let (s, v) = b
        .admin_as(&ada, "DELETE", "/v1/admin/operators/admin", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, _) = b.admin("GET", "/v1/admin/whoami", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let hash = vouch_backend::access::TokenHash::of(&b.token);
    assert!(!b.store.bootstrap_operators(&hash).await.expect("bootstrap"));
    let (s, _) = b.admin("GET", "/v1/admin/whoami", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, list) = b.admin_as(&ada, "GET", "/v1/admin/operators", None).await;
    assert_eq!(s, StatusCode::OK);
    let removed: Vec<bool> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|o| !o["removed_ms"].is_null())
        .collect();
    assert_eq!(removed, [false, true], "{list}");
}

async fn hostile_operator_input_is_a_clear_4xx(db: Db) {
    let b = Backend::new(&db).await;
    for name in [
        "<script>alert(1)</script>",
        "'; DROP TABLE operators; --",
        "",
        "a b",
        "../admin",
        &"x".repeat(65),
        "ädmin",
        "-leading",
    ] {
        let (s, v) = b
            .admin(
                "POST",
                "/v1/admin/operators",
                Some(json!({ "name": name, "role": "viewer" })),
            )
            .await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::BAD_REQUEST, "invalid_name"),
            "{name:?}: {v}"
        );
        let (s, v) = b
            .admin(
                "POST",
                "/v1/admin/tokens",
                Some(json!({ "operator": name })),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name:?}: {v}");
    }
    for role in ["root", "Admin", "", "admin "] {
        let (s, v) = b
            .admin(
                "POST",
                "/v1/admin/operators",
                Some(json!({ "name": "x", "role": role })),
            )
            .await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::BAD_REQUEST, "invalid_role"),
            "{role:?}: {v}"
        );
    }
    // Unknown fields, wrong types, ids that name nothing.
    let (s, v) = b
        .admin(
            "POST",
            "/v1/admin/operators",
            Some(json!({ "name": "x", "role": "viewer", "admin": true })),
        )
        .await;
    assert!(s.is_client_error(), "{v}");
    let (s, v) = b
        .admin(
            "POST",
            "/v1/admin/operators",
            Some(json!({ "name": 1, "role": "viewer" })),
        )
        .await;
    assert!(s.is_client_error(), "{v}");
    for id in ["%3Cscript%3E", "init'--", "0123456789ab"] {
        let (s, v) = b
            .admin("DELETE", &format!("/v1/admin/tokens/{id}"), None)
            .await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{id}: {v}"
        );
    }
    // Bearer values that are not tokens never reach a lookup.
    for t in [
        "",
        "vouch_",
        "vouch_zz_zz",
        "Basic abc",
        "vouch_0123456789ab_",
    ] {
        let (s, _) = b.admin_as(t, "GET", "/v1/admin/whoami", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{t:?}");
    }
}
