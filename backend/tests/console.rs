//! The web console through the router (issue 18): login and its cookie, the
//! pages, search, a device page, a revoke with confirmation, a viewer who
//! sees no revoke button and is refused it anyway, CSRF-less POSTs refused,
//! an import with a dry run, and hostile strings escaped everywhere.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{Backend, Db, Device};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

on_both!(
    login_sets_a_strict_cookie_and_a_bad_token_gets_nothing,
    an_operator_searches_opens_a_device_and_revokes_it_after_confirming,
    a_viewer_sees_no_revoke_and_is_refused_it_and_forms_need_their_csrf_token,
    hostile_strings_are_escaped_on_every_page,
    an_import_dry_run_reports_every_row_and_writes_nothing,
    an_operator_suspends_a_gateway_after_confirming_and_sees_the_keys,
    console_posts_are_judged_before_their_bodies_and_never_cross_site,
    every_console_form_checks_its_role_and_its_csrf_token,
);

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(b: &Backend, req: Request<Body>) -> Answer {
    let res = b.router.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).expect("form")
}

/// A logged-in session: its cookie header value.
async fn login(b: &Backend, token: &str) -> String {
    let a = send(
        b,
        Request::post("/console/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form(&[("token", token)])))
            .expect("request"),
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let cookie = a.headers[header::SET_COOKIE].to_str().expect("ascii");
    cookie.split(';').next().expect("pair").to_owned()
}

async fn get(b: &Backend, cookie: &str, path: &str) -> Answer {
    send(
        b,
        Request::get(path)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .expect("request"),
    )
    .await
}

async fn post(b: &Backend, cookie: &str, path: &str, pairs: &[(&str, &str)]) -> Answer {
    send(
        b,
        Request::post(path)
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form(pairs)))
            .expect("request"),
    )
    .await
}

/// A multipart form (`name`, optional file name, value), as a browser sends
/// the import form.
async fn post_multipart(
    b: &Backend,
    cookie: &str,
    path: &str,
    parts: &[(&str, Option<&str>, &str)],
) -> Answer {
    let boundary = "vouch-test-boundary-7f3a";
    let mut body = String::new();
    for (name, file, value) in parts {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\""
        ));
        if let Some(f) = file {
            body.push_str(&format!("; filename=\"{f}\"\r\nContent-Type: text/csv"));
        }
        body.push_str(&format!("\r\n\r\n{value}\r\n"));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    send(
        b,
        Request::post(path)
            .header(header::COOKIE, cookie)
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(Body::from(body))
            .expect("request"),
    )
    .await
}

/// The CSRF token of a page's forms.
fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 64].to_owned()
}

async fn add_operator(b: &Backend, name: &str, role: &str) -> String {
    let (s, v) = b
        .admin(
            "POST",
            "/v1/admin/operators",
            Some(json!({ "name": name, "role": role })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["token"]["token"].as_str().expect("token").to_owned()
}

async fn login_sets_a_strict_cookie_and_a_bad_token_gets_nothing(db: Db) {
    let b = Backend::new(&db).await;
    // Without a session every page sends you to the login page.
    let a = get(&b, "", "/console").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.headers[header::LOCATION], "/console/login");
    let a = send(
        &b,
        Request::post("/console/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form(&[("token", "vouch_nope")])))
            .expect("request"),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.headers.get(header::SET_COOKIE).is_none());
    let a = send(
        &b,
        Request::post("/console/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form(&[("token", &b.token)])))
            .expect("request"),
    )
    .await;
    let cookie = a.headers[header::SET_COOKIE].to_str().expect("ascii");
    for flag in [
        "__Host-vouch_console=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/;",
    ] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    let cookie = cookie.split(';').next().expect("pair");
    let a = get(&b, cookie, "/console").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(
        a.body.contains("Overview") && a.body.contains("admin"),
        "{}",
        a.body
    );
    let csp = a.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("csp");
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(a.headers[header::X_FRAME_OPTIONS], "DENY");
    assert!(!a.body.contains("<script"), "no script on any page");
    // Every page answers.
    for page in [
        "/console/devices",
        "/console/gateways",
        "/console/policies",
        "/console/lockouts",
        "/console/audit",
        "/console/audit/verify",
        "/console/import",
    ] {
        let a = get(&b, cookie, page).await;
        assert_eq!(a.status, StatusCode::OK, "{page}: {}", a.body);
    }
    // Logout ends the session (its form needs the CSRF token too).
    let page = get(&b, cookie, "/console").await.body;
    assert_eq!(
        post(&b, cookie, "/console/logout", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    let a = post(&b, cookie, "/console/logout", &[("csrf", &csrf(&page))]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(
        get(&b, cookie, "/console").await.status,
        StatusCode::SEE_OTHER
    );
    // A session dies with its token.
    let otto = add_operator(&b, "otto", "operator").await;
    let cookie = login(&b, &otto).await;
    assert_eq!(get(&b, &cookie, "/console").await.status, StatusCode::OK);
    let id = otto.split('_').nth(1).expect("id");
    let (s, _) = b
        .admin("DELETE", &format!("/v1/admin/tokens/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&b, &cookie, "/console").await.status,
        StatusCode::SEE_OTHER
    );
}

async fn an_operator_searches_opens_a_device_and_revokes_it_after_confirming(db: Db) {
    let b = Backend::new(&db).await;
    let devices: Vec<Device> = (1..=3).map(Device::new).collect();
    for (i, d) in devices.iter().enumerate() {
        let (s, v) = b
            .admin(
                "POST",
                "/v1/admin/peripherals",
                Some(json!({
                    "public_key": d.key.public_key().to_string(),
                    "group": if i == 0 { "meters" } else { "pumps" },
                    "attributes": { "fw": format!("1.{i}") },
                })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let cookie = login(&b, &add_operator(&b, "otto", "operator").await).await;
    let ids: Vec<String> = devices.iter().map(|d| d.id.to_string()).collect();
    let page = get(&b, &cookie, "/console/devices?group=pumps").await.body;
    assert!(
        !page.contains(&ids[0]) && page.contains(&ids[1]) && page.contains(&ids[2]),
        "{page}"
    );
    let page = get(&b, &cookie, "/console/devices?attribute=fw%3D1.2")
        .await
        .body;
    assert!(!page.contains(&ids[1]) && page.contains(&ids[2]), "{page}");
    let page = get(&b, &cookie, "/console/devices?status=revoked")
        .await
        .body;
    assert!(page.contains("no device matches"), "{page}");
    // By id: its page, with its actions.
    let page = get(&b, &cookie, &format!("/console/devices?id={}", ids[0]))
        .await
        .body;
    assert!(
        page.contains("meters") && page.contains(&format!("/console/devices/{}/revoke", ids[0])),
        "{page}"
    );
    // Revoke: first the confirmation page, then the confirmed POST.
    let confirm = get(&b, &cookie, &format!("/console/devices/{}/revoke", ids[0])).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    assert!(
        confirm.body.contains("Revoking is final"),
        "{}",
        confirm.body
    );
    let token = csrf(&confirm.body);
    let path = format!("/console/devices/{}/revoke", ids[0]);
    // Unconfirmed: back to the confirmation, nothing done.
    let a = post(&b, &cookie, &path, &[("csrf", &token)]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let a = post(
        &b,
        &cookie,
        &path,
        &[("csrf", &token), ("confirmed", "yes")],
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let (_, v) = b
        .admin("GET", &format!("/v1/admin/peripherals/{}", ids[0]), None)
        .await;
    assert_eq!(v["status"], "revoked", "{v}");
    let entries = b.audit(&format!("peripheral={}", ids[0])).await;
    assert!(
        entries.iter().any(|e| e["actor"] == "operator:otto"
            && e["detail"].as_str().unwrap_or_default().contains("revoked")),
        "{entries:?}"
    );
    let page = get(
        &b,
        &cookie,
        &format!("/console/devices/{}?done=revoke", ids[0]),
    )
    .await
    .body;
    assert!(
        page.contains("status-revoked") && !page.contains(&format!("{}/revoke\"", ids[0])),
        "{page}"
    );
    // Garbage in the path or query: a page with a 4xx, never a 5xx.
    for p in [
        "/console/devices/zz",
        "/console/devices/zz/revoke",
        "/console/devices?status=gone",
        "/console/devices?after=zz",
        "/console/devices?attribute=nothing",
        "/console/audit?after=x",
        "/console/gateways/zz",
        &format!("/console/devices/{}/explode", ids[1]),
    ] {
        let a = get(&b, &cookie, p).await;
        assert!(a.status.is_client_error(), "{p}: {} {}", a.status, a.body);
    }
}

async fn a_viewer_sees_no_revoke_and_is_refused_it_and_forms_need_their_csrf_token(db: Db) {
    let b = Backend::new(&db).await;
    let d = Device::new(1);
    b.enroll_peripheral(&d, None).await;
    let viewer = login(&b, &add_operator(&b, "vera", "viewer").await).await;
    let page = get(&b, &viewer, &format!("/console/devices/{}", d.id)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        !page.body.contains("/revoke"),
        "a viewer sees no revoke: {}",
        page.body
    );
    let path = format!("/console/devices/{}/revoke", d.id);
    assert_eq!(get(&b, &viewer, &path).await.status, StatusCode::FORBIDDEN);
    let a = post(
        &b,
        &viewer,
        &path,
        &[("csrf", &csrf(&page.body)), ("confirmed", "yes")],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(a.body.contains("forbidden"), "{}", a.body);
    // An operator's POST without the session's CSRF token, or with another
    // session's, is refused before anything happens.
    let otto = login(&b, &add_operator(&b, "otto", "operator").await).await;
    let other = login(&b, &add_operator(&b, "olga", "operator").await).await;
    let others_token = csrf(&get(&b, &other, "/console").await.body);
    for pairs in [
        vec![("confirmed", "yes")],
        vec![("csrf", ""), ("confirmed", "yes")],
        vec![("csrf", others_token.as_str()), ("confirmed", "yes")],
    ] {
        let a = post(&b, &otto, &path, &pairs).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{pairs:?}: {}", a.body);
        assert!(a.body.contains("csrf"), "{}", a.body);
    }
    let (_, v) = b
        .admin("GET", &format!("/v1/admin/peripherals/{}", d.id), None)
        .await;
    assert_eq!(v["status"], "active", "nothing was revoked: {v}");
    // No cookie at all: to the login page, nothing done.
    let a = post(&b, "", &path, &[("confirmed", "yes")]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
}

async fn hostile_strings_are_escaped_on_every_page(db: Db) {
    let b = Backend::new(&db).await;
    let d = Device::new(1);
    let hostile = "<script>alert(1)</script>";
    let (s, v) = b
        .admin(
            "POST",
            "/v1/admin/peripherals",
            Some(json!({
                "public_key": d.key.public_key().to_string(),
                "attributes": { "note": "\"><img src=x onerror=alert(1)>", "x": hostile },
            })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let cookie = login(&b, &b.token).await;
    for page in [
        format!("/console/devices/{}", d.id),
        "/console/devices".to_owned(),
        format!("/console/devices?group={}", urlencode(hostile)),
        format!("/console/audit?action={}", urlencode(hostile)),
        format!("/console/devices?attribute=x%3D{}", urlencode(hostile)),
    ] {
        let a = get(&b, &cookie, &page).await;
        assert!(
            !a.body.contains("<script>") && !a.body.contains("<img"),
            "{page}: {}",
            a.body
        );
    }
    let a = get(&b, &cookie, &format!("/console/devices/{}", d.id)).await;
    assert!(a.body.contains("&lt;script&gt;"), "{}", a.body);
    // The search by a hostile attribute value finds the device, as text.
    let a = get(
        &b,
        &cookie,
        &format!("/console/devices?attribute=x%3D{}", urlencode(hostile)),
    )
    .await;
    assert!(a.body.contains(&d.id.to_string()), "{}", a.body);
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).expect("enc")[2..].to_owned()
}

async fn an_import_dry_run_reports_every_row_and_writes_nothing(db: Db) {
    let b = Backend::new(&db).await;
    let cookie = login(&b, &add_operator(&b, "otto", "operator").await).await;
    let page = get(&b, &cookie, "/console/import").await.body;
    assert!(
        page.contains("multipart/form-data") && page.contains("type=\"file\""),
        "{page}"
    );
    let token = csrf(&page);
    let good = Device::new(5);
    let rows = format!(
        "public_key,group\n{},meters\nnot-a-key,meters\n",
        good.key.public_key()
    );
    // A file, in a dry run: every row reported, nothing written.
    let a = post_multipart(
        &b,
        &cookie,
        "/console/import",
        &[
            ("csrf", None, &token),
            ("format", None, "csv"),
            ("dry_run", None, "yes"),
            ("file", Some("factory.csv"), &rows),
            ("rows", None, ""),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(
        a.body.contains("Dry run")
            && a.body.contains("would_create")
            && a.body.contains("invalid_public_key"),
        "{}",
        a.body
    );
    let (_, v) = b.admin("GET", "/v1/admin/peripherals", None).await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0), "{v}");
    // Without the CSRF token: refused, nothing written.
    let a = post_multipart(
        &b,
        &cookie,
        "/console/import",
        &[("format", None, "csv"), ("rows", None, &rows)],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    // Pasted rows, for real.
    let a = post_multipart(
        &b,
        &cookie,
        "/console/import",
        &[
            ("csrf", None, &token),
            ("format", None, "csv"),
            ("rows", None, &rows),
        ],
    )
    .await;
    assert!(a.body.contains("1 created"), "{}", a.body);
    let (_, v) = b.admin("GET", "/v1/admin/peripherals", None).await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
    // A viewer has no import page and cannot post one, even with its own
    // session's CSRF token.
    let viewer = login(&b, &add_operator(&b, "vera", "viewer").await).await;
    assert_eq!(
        get(&b, &viewer, "/console/import").await.status,
        StatusCode::FORBIDDEN
    );
    let viewer_token = csrf(&get(&b, &viewer, "/console").await.body);
    let a = post_multipart(
        &b,
        &viewer,
        "/console/import",
        &[
            ("csrf", None, &viewer_token),
            ("format", None, "csv"),
            ("rows", None, &rows),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.body.contains("forbidden"), "{}", a.body);
}

async fn an_operator_suspends_a_gateway_after_confirming_and_sees_the_keys(db: Db) {
    let b = Backend::new(&db).await;
    let gw = vouch_proto::keys::IdentityKey::from_seed(&[100; 32]);
    b.enroll_gateway(&gw, Some("plant")).await;
    let key = gw.public_key().to_string();
    let viewer = login(&b, &add_operator(&b, "vera", "viewer").await).await;
    let page = get(&b, &viewer, &format!("/console/gateways/{key}")).await;
    assert!(
        page.body.contains("plant") && !page.body.contains("/suspend"),
        "{}",
        page.body
    );
    let cookie = login(&b, &add_operator(&b, "otto", "operator").await).await;
    let page = get(&b, &cookie, &format!("/console/gateways/{key}"))
        .await
        .body;
    assert!(
        page.contains(&format!("/console/gateways/{key}/suspend")),
        "{page}"
    );
    let path = format!("/console/gateways/{key}/suspend");
    let confirm = get(&b, &cookie, &path).await;
    assert!(
        confirm.body.contains("every session it holds closes"),
        "{}",
        confirm.body
    );
    let a = post(&b, &cookie, &path, &[("confirmed", "yes")]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "no CSRF token: {}", a.body);
    let a = post(
        &b,
        &cookie,
        &path,
        &[("csrf", &csrf(&confirm.body)), ("confirmed", "yes")],
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let (_, v) = b
        .admin("GET", &format!("/v1/admin/gateways/{key}"), None)
        .await;
    assert_eq!(v["status"], "suspended", "{v}");
    let page = get(&b, &viewer, "/console/keys").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("(current)") && page.body.contains("Live instances"),
        "{}",
        page.body
    );
}

/// A request body that never arrives.
struct NeverArrives;

impl axum::body::HttpBody for NeverArrives {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

/// From the adversarial review of the console: an unauthenticated POST is
/// answered from its headers (its body is never waited for), forms are
/// small, a post from another site is refused (login included), two
/// session cookies are none, an expired session is none.
async fn console_posts_are_judged_before_their_bodies_and_never_cross_site(db: Db) {
    let b = Backend::new(&db).await;
    for path in [
        "/console/import",
        "/console/logout",
        "/console/lockouts/clear",
        "/console/policies",
        "/console/policies/remove",
        "/console/devices/0011223344556677/revoke",
        "/console/gateways/00/suspend",
    ] {
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::CONTENT_LENGTH, "60000000")
            .body(Body::new(NeverArrives))
            .expect("request");
        let a = tokio::time::timeout(std::time::Duration::from_secs(3), send(&b, req))
            .await
            .unwrap_or_else(|_| panic!("{path}: waited for a body before knowing the caller"));
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{path}");
    }
    let big = format!("token={}", "a".repeat(1 << 20));
    let a = send(
        &b,
        Request::post("/console/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(big))
            .expect("request"),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    // A login posted from another site sets nothing (nor one whose origin
    // the browser will not say, without saying it is same-origin).
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://evil.example"),
        ("origin", "null"),
    ] {
        let a = send(
            &b,
            Request::post("/console/login")
                .header(header::HOST, "vouch.example:8443")
                .header(name, value)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form(&[("token", &b.token)])))
                .expect("request"),
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{name}");
        assert!(a.headers.get(header::SET_COOKIE).is_none(), "{name}");
    }
    // The same site may, named by Host (HTTP/1.1) or by the URI's
    // authority (HTTP/2, where browsers send no Host).
    let a = send(
        &b,
        Request::post("https://vouch.example:8443/console/login")
            .header("origin", "https://vouch.example:8443")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form(&[("token", &b.token)])))
            .expect("request"),
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "HTTP/2: {}", a.body);
    let a = send(
        &b,
        Request::post("/console/login")
            .header(header::HOST, "vouch.example:8443")
            .header("origin", "https://vouch.example:8443")
            .header("sec-fetch-site", "same-origin")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form(&[("token", &b.token)])))
            .expect("request"),
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let cookie = login(&b, &b.token).await;
    assert!(cookie.starts_with("__Host-"), "{cookie}");
    assert_eq!(get(&b, &cookie, "/console").await.status, StatusCode::OK);
    // Two cookies of the name: no session.
    let other = login(&b, &b.token).await;
    let both = format!("{cookie}; {other}");
    assert_eq!(
        get(&b, &both, "/console").await.status,
        StatusCode::SEE_OTHER
    );
    // An expired session: none.
    let caller = b
        .store
        .authenticate(&b.token)
        .await
        .expect("store")
        .expect("caller");
    let id = "ab".repeat(32);
    b.store
        .open_console_session(
            &vouch_backend::access::TokenHash::of(&id),
            &caller,
            &"cd".repeat(32),
            vouch_backend::store::now_ms() - 1,
        )
        .await
        .expect("session");
    let expired = format!("__Host-vouch_console={id}");
    assert_eq!(
        get(&b, &expired, "/console").await.status,
        StatusCode::SEE_OTHER
    );
}

/// Every console form checks its role and its CSRF token, not only the
/// device actions.
async fn every_console_form_checks_its_role_and_its_csrf_token(db: Db) {
    let b = Backend::new(&db).await;
    let otto = login(&b, &add_operator(&b, "otto", "operator").await).await;
    let vera = login(&b, &add_operator(&b, "vera", "viewer").await).await;
    let otto_csrf = csrf(&get(&b, &otto, "/console").await.body);
    let vera_csrf = csrf(&get(&b, &vera, "/console").await.body);
    let rule = [
        ("peripheral", "any"),
        ("gateway", "any"),
        ("scope", "telemetry"),
        ("session_s", "60"),
        ("resumption_s", "60"),
    ];
    // Adding a rule: an operator with its token may; without it, or a
    // viewer, may not.
    let with = |token: &'static str| -> Vec<(&'static str, &'static str)> {
        let mut f = rule.to_vec();
        f.push(("csrf", token));
        f
    };
    let (vera_csrf, otto_csrf): (&'static str, &'static str) = (
        Box::leak(vera_csrf.into_boxed_str()),
        Box::leak(otto_csrf.into_boxed_str()),
    );
    let pairs = |v: Vec<(&'static str, &'static str)>| v;
    assert_eq!(
        post(&b, &otto, "/console/policies", &rule).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(&b, &vera, "/console/policies", &pairs(with(vera_csrf)))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(b.state.store.list_policies().await.expect("rules").len(), 0);
    assert_eq!(
        post(&b, &otto, "/console/policies", &pairs(with(otto_csrf)))
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    let id = b.state.store.list_policies().await.expect("rules")[0]
        .id
        .to_string();
    // Removing one is the admin's.
    let a = post(
        &b,
        &otto,
        "/console/policies/remove",
        &[("csrf", otto_csrf), ("id", &id)],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let admin = login(&b, &b.token).await;
    let admin_csrf = csrf(&get(&b, &admin, "/console").await.body);
    assert_eq!(
        post(&b, &admin, "/console/policies/remove", &[("id", &id)])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(b.state.store.list_policies().await.expect("rules").len(), 1);
    let a = post(
        &b,
        &admin,
        "/console/policies/remove",
        &[("csrf", &admin_csrf), ("id", &id)],
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(b.state.store.list_policies().await.expect("rules").len(), 0);
    // Clearing a lockout: a viewer may not, nor a form without the token.
    for (cookie, pairs) in [
        (&vera, vec![("csrf", vera_csrf), ("subject", "gateway:x")]),
        (&otto, vec![("subject", "gateway:x")]),
    ] {
        assert_eq!(
            post(&b, cookie, "/console/lockouts/clear", &pairs)
                .await
                .status,
            StatusCode::FORBIDDEN
        );
    }
}
