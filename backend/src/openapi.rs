//! The OpenAPI 3.1 document served at `/v1/openapi.json`, written by hand.
//!
//! [`ROUTES`] lists every (method, path) the router serves; a test checks
//! that the document describes exactly these and that each answers with
//! something other than the router's "no such route".

use serde_json::{json, Map, Value};
use vouch_proto::wire::backend::route;

use crate::access::Role;

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
        Auth::Role(Role::Viewer),
        Body::None,
        Body::Json("PeripheralPage"),
    ),
    (
        "post",
        route::admin::PERIPHERALS,
        "Enroll a peripheral",
        Auth::Role(Role::Operator),
        Body::Json("EnrollPeripheral"),
        Body::Json("Peripheral"),
    ),
    (
        "post",
        route::admin::PERIPHERALS_IMPORT,
        "Bulk enroll (query: format=csv|ndjson, dry_run)",
        Auth::Role(Role::Operator),
        Body::Text,
        Body::Json("ImportReport"),
    ),
    (
        "get",
        route::admin::PERIPHERAL,
        "Show a peripheral",
        Auth::Role(Role::Viewer),
        Body::None,
        Body::Json("Peripheral"),
    ),
    (
        "post",
        route::admin::PERIPHERAL_ACTION,
        "activate, suspend, reinstate or revoke a peripheral",
        Auth::Role(Role::Operator),
        Body::None,
        Body::Json("Peripheral"),
    ),
    (
        "get",
        route::admin::GATEWAYS,
        "List gateways (query: status, group, site, after, limit)",
        Auth::Role(Role::Viewer),
        Body::None,
        Body::Json("GatewayPage"),
    ),
    (
        "post",
        route::admin::GATEWAYS,
        "Enroll a gateway; returns its TLS client certificate",
        Auth::Role(Role::Operator),
        Body::Json("EnrollGateway"),
        Body::Json("GatewayEnrolled"),
    ),
    (
        "get",
        route::admin::GATEWAY,
        "Show a gateway",
        Auth::Role(Role::Viewer),
        Body::None,
        Body::Json("Gateway"),
    ),
    (
        "post",
        route::admin::GATEWAY_ACTION,
        "activate, suspend, reinstate or revoke a gateway",
        Auth::Role(Role::Operator),
        Body::None,
        Body::Json("Gateway"),
    ),
    (
        "get",
        route::admin::POLICIES,
        "List policy rules",
        Auth::Role(Role::Viewer),
        Body::None,
        Body::Json("PolicyList"),
    ),
    (
        "post",
        route::admin::POLICIES,
        "Add a policy rule",
        Auth::Role(Role::Operator),
        Body::Json("NewPolicy"),
        Body::Json("Policy"),
    ),
    (
        "delete",
        route::admin::POLICY,
        "Remove a policy rule",
        Auth::Role(Role::Admin),
        Body::None,
        Body::None,
    ),
    (
        "get",
        route::admin::AUDIT,
        "Query the audit log (query: peripheral, gateway, action, since, until, after, limit)",
        Auth::Role(Role::Viewer),
        Body::None,
        Body::Json("AuditPage"),
    ),
    (
        "get",
        route::admin::AUDIT_VERIFY,
        "Recompute the audit hash chain",
        Auth::Role(Role::Viewer),
        Body::None,
        Body::Json("AuditVerdict"),
    ),
    (
        "get",
        route::admin::LOCKOUTS,
        "Lockouts in force",
        Auth::Role(Role::Viewer),
        Body::None,
        Body::Json("LockoutList"),
    ),
    (
        "delete",
        route::admin::LOCKOUT,
        "Lift a lockout",
        Auth::Role(Role::Operator),
        Body::None,
        Body::None,
    ),
    (
        "get",
        route::admin::ANCHOR,
        "The peripheral provisioning bundle: the current anchors and the last update serial",
        Auth::Role(Role::Viewer),
        Body::None,
        Body::Json("AnchorBundle"),
    ),
    (
        "get",
        route::admin::WHOAMI,
        "Who the presented token belongs to: operator name, role, token id",
        Auth::Role(Role::Viewer),
        Body::None,
        Body::Json("WhoAmI"),
    ),
    (
        "get",
        route::admin::OPERATORS,
        "List operators, removed ones too",
        Auth::Role(Role::Admin),
        Body::None,
        Body::Json("OperatorList"),
    ),
    (
        "post",
        route::admin::OPERATORS,
        "Add an operator with a role; answers its first token, once",
        Auth::Role(Role::Admin),
        Body::Json("NewOperator"),
        Body::Json("AddedOperator"),
    ),
    (
        "delete",
        route::admin::OPERATOR,
        "Remove an operator: its tokens stop working, the name stays taken",
        Auth::Role(Role::Admin),
        Body::None,
        Body::None,
    ),
    (
        "get",
        route::admin::TOKENS,
        "List API tokens (query: operator); never a secret",
        Auth::Role(Role::Admin),
        Body::None,
        Body::Json("TokenList"),
    ),
    (
        "post",
        route::admin::TOKENS,
        "Another token for an operator; answers it, once",
        Auth::Role(Role::Admin),
        Body::Json("NewTokenFor"),
        Body::Json("IssuedToken"),
    ),
    (
        "delete",
        route::admin::TOKEN,
        "Revoke a token",
        Auth::Role(Role::Admin),
        Body::None,
        Body::None,
    ),
    (
        "post",
        route::admin::TOKEN_ROTATE,
        "Rotate a token: a new one for the same operator, the old one revoked",
        Auth::Role(Role::Admin),
        Body::None,
        Body::Json("IssuedToken"),
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
        Auth::Role(Role::Viewer),
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
    /// An operator's bearer token whose role is at least this one
    /// (403 `forbidden` below it).
    Role(Role),
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
            Auth::Role(role) => {
                op.insert("security".into(), json!([{ "adminToken": [] }]));
                op.insert("x-vouch-role".into(), json!(role.as_str()));
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
