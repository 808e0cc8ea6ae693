//! The OpenAPI 3.1 document served at `/v1/openapi.json`, written by hand.
//!
//! [`ROUTES`] lists every (method, path) the router serves; a test checks
//! that the document describes exactly these and that each answers with
//! something other than the router's "no such route".

use serde_json::{json, Map, Value};
use vouch_proto::wire::backend::route;

/// Every route: (method, OpenAPI path, summary, auth, request body type,
/// response body type).
pub const ROUTES: &[(&str, &str, &str, Auth, Body, Body)] = &[
    (
        "post",
        route::VOUCH,
        "Vouch for one peripheral hello (SPEC.md §5.3)",
        Auth::Gateway,
        Body::Postcard("VouchRequest"),
        Body::Postcard("VouchAnswer"),
    ),
    (
        "post",
        route::VOUCH_BATCH,
        "Vouch for up to 64 hellos",
        Auth::Gateway,
        Body::Postcard("VouchBatchRequest"),
        Body::Postcard("VouchBatchAnswer"),
    ),
    (
        "get",
        route::FEED,
        "Revocation feed long-poll (query: after, wait_ms)",
        Auth::Gateway,
        Body::None,
        Body::Postcard("FeedBatch"),
    ),
    (
        "post",
        route::SESSIONS,
        "Report session attach/detach events",
        Auth::Gateway,
        Body::Postcard("SessionReport"),
        Body::Postcard("SessionReportAnswer"),
    ),
    (
        "get",
        route::ANCHOR_UPDATES,
        "Signed trust-anchor updates after a serial, for peripherals in session (query: after; SPEC.md §10.6)",
        Auth::Gateway,
        Body::None,
        Body::Postcard("AnchorUpdateBatch"),
    ),
    (
        "post",
        route::CERTIFICATE,
        "Renew the calling gateway's client certificate: same key, same CA, a fresh validity (SPEC.md §10.8)",
        Auth::Gateway,
        Body::Postcard("CertificateRenewal"),
        Body::Postcard("CertificateIssued"),
    ),
    (
        "get",
        route::admin::PERIPHERALS,
        "List peripherals (query: status, group, after, limit)",
        Auth::Admin,
        Body::None,
        Body::Json("PeripheralPage"),
    ),
    (
        "post",
        route::admin::PERIPHERALS,
        "Enroll a peripheral",
        Auth::Admin,
        Body::Json("EnrollPeripheral"),
        Body::Json("Peripheral"),
    ),
    (
        "post",
        route::admin::PERIPHERALS_IMPORT,
        "Bulk enroll (query: format=csv|ndjson, dry_run)",
        Auth::Admin,
        Body::Text,
        Body::Json("ImportReport"),
    ),
    (
        "get",
        route::admin::PERIPHERAL,
        "Show a peripheral",
        Auth::Admin,
        Body::None,
        Body::Json("Peripheral"),
    ),
    (
        "post",
        route::admin::PERIPHERAL_ACTION,
        "activate, suspend, reinstate or revoke a peripheral",
        Auth::Admin,
        Body::None,
        Body::Json("Peripheral"),
    ),
    (
        "get",
        route::admin::GATEWAYS,
        "List gateways (query: status, group, site, after, limit)",
        Auth::Admin,
        Body::None,
        Body::Json("GatewayPage"),
    ),
    (
        "post",
        route::admin::GATEWAYS,
        "Enroll a gateway; returns its TLS client certificate",
        Auth::Admin,
        Body::Json("EnrollGateway"),
        Body::Json("GatewayEnrolled"),
    ),
    (
        "get",
        route::admin::GATEWAY,
        "Show a gateway",
        Auth::Admin,
        Body::None,
        Body::Json("Gateway"),
    ),
    (
        "post",
        route::admin::GATEWAY_ACTION,
        "activate, suspend, reinstate or revoke a gateway",
        Auth::Admin,
        Body::None,
        Body::Json("Gateway"),
    ),
    (
        "get",
        route::admin::POLICIES,
        "List policy rules",
        Auth::Admin,
        Body::None,
        Body::Json("PolicyList"),
    ),
    (
        "post",
        route::admin::POLICIES,
        "Add a policy rule",
        Auth::Admin,
        Body::Json("NewPolicy"),
        Body::Json("Policy"),
    ),
    (
        "delete",
        route::admin::POLICY,
        "Remove a policy rule",
        Auth::Admin,
        Body::None,
        Body::None,
    ),
    (
        "get",
        route::admin::AUDIT,
        "Query the audit log (query: peripheral, gateway, action, since, until, after, limit)",
        Auth::Admin,
        Body::None,
        Body::Json("AuditPage"),
    ),
    (
        "get",
        route::admin::AUDIT_VERIFY,
        "Recompute the audit hash chain",
        Auth::Admin,
        Body::None,
        Body::Json("AuditVerdict"),
    ),
    (
        "get",
        route::admin::LOCKOUTS,
        "Lockouts in force",
        Auth::Admin,
        Body::None,
        Body::Json("LockoutList"),
    ),
    (
        "delete",
        route::admin::LOCKOUT,
        "Lift a lockout",
        Auth::Admin,
        Body::None,
        Body::None,
    ),
    (
        "get",
        route::admin::ANCHOR,
        "The peripheral provisioning bundle: the current anchors and the last update serial",
        Auth::Admin,
        Body::None,
        Body::Json("AnchorBundle"),
    ),
    (
        "get",
        route::HEALTHZ,
        "Liveness",
        Auth::None,
        Body::None,
        Body::Json("Status"),
    ),
    (
        "get",
        route::READYZ,
        "Readiness (database reachable)",
        Auth::None,
        Body::None,
        Body::Json("Status"),
    ),
    (
        "get",
        route::METRICS,
        "Prometheus metrics (refusals by cause: admin token; without one on the loopback `ops_listen` only)",
        Auth::Admin,
        Body::None,
        Body::Text,
    ),
    (
        "get",
        route::OPENAPI,
        "This document",
        Auth::None,
        Body::None,
        Body::Json("OpenApi"),
    ),
];

/// How a route authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// None.
    None,
    /// Gateway client certificate (mutual TLS).
    Gateway,
    /// Admin bearer token.
    Admin,
}

/// A body kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    None,
    /// `application/vnd.vouch.v1+postcard` carrying the named `vouch_proto::wire::backend` type.
    Postcard(&'static str),
    /// `application/json` with the named schema.
    Json(&'static str),
    /// `text/plain` (or CSV / NDJSON for imports).
    Text,
}

fn content(b: Body) -> Option<Value> {
    match b {
        Body::None => None,
        Body::Postcard(t) => Some(json!({
            "application/vnd.vouch.v1+postcard": {
                "schema": { "type": "string", "format": "binary",
                            "description": format!("1 ‖ postcard({t}), see vouch_proto::wire::backend and SPEC.md §10") }
            }
        })),
        Body::Json(t) => Some(json!({
            "application/json": { "schema": { "type": "object", "description": t } }
        })),
        Body::Text => Some(json!({ "text/plain": { "schema": { "type": "string" } } })),
    }
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for &(method, path, summary, auth, req, res) in ROUTES {
        let mut op = Map::new();
        op.insert("summary".into(), json!(summary));
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        match auth {
            Auth::None => {
                op.insert("security".into(), json!([]));
            }
            Auth::Gateway => {
                op.insert("security".into(), json!([{ "gatewayCertificate": [] }]));
            }
            Auth::Admin => {
                op.insert("security".into(), json!([{ "adminToken": [] }]));
            }
        }
        if let Some(c) = content(req) {
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": c }),
            );
        }
        let mut ok = json!({ "description": "success" });
        if let Some(c) = content(res) {
            ok["content"] = c;
        }
        let status = if method == "delete" { "204" } else { "200" };
        op.insert(
            "responses".into(),
            json!({
                status: ok,
                "4XX": { "description": "client error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
                "503": { "description": "overloaded or store unavailable; retry after Retry-After", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
            }),
        );
        let entry = paths
            .entry(path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(method.to_owned(), Value::Object(op));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Vouch backend",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Registry, vouch issuing, revocation feed and admin API of the Vouch backend. Gateway routes take postcard bodies over mutual TLS; admin routes take JSON with a bearer token."
        },
        "paths": Value::Object(paths),
        "components": {
            "securitySchemes": {
                "adminToken": { "type": "http", "scheme": "bearer" },
                "gatewayCertificate": { "type": "mutualTLS", "description": "TLS client certificate issued by the backend CA at gateway enrollment" }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": { "type": "string", "description": "stable machine-readable code" },
                                "message": { "type": "string" }
                            }
                        }
                    }
                }
            }
        }
    })
}
