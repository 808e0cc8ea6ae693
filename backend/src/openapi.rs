//! The OpenAPI 3.1 document served at `/v1/openapi.json`.
//!
//! [`ROUTES`] lists every (method, path) the router serves, with the role
//! it needs and the Rust types of its query, body and answer; a test checks
//! that the document describes exactly these and that each answers with
//! something other than the router's "no such route". Every JSON schema is
//! generated from those types (`schemars`, JSON Schema 2020-12 as OpenAPI
//! 3.1 uses it, the serde attributes honoured), so the document cannot
//! drift from what the handlers read and write; `.ci/run` runs a
//! property-based API tester (schemathesis) against a live backend from
//! this document. Postcard bodies of the gateway API are binary, described
//! by SPEC.md §10.

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{json, Map, Value};
use vouch_proto::wire::backend::{route, ErrorCode};

use crate::access::{OperatorRecord, Role, TokenRecord};
use crate::import::RawRow as EnrollPeripheral;
use crate::model::{GatewayRecord, PeripheralRecord, PolicyRule};
use crate::registry::{EnrollGateway, GatewayEnrolled, GatewayView, NewPolicy, PeripheralView};
use crate::routes::admin::{
    AuditQuery, Enrolled, ImportAnswer, ImportQuery, ListQuery, Lockout, Page,
};
use crate::routes::gateway::{AnchorUpdatesQuery, FeedQuery};
use crate::routes::operators::{
    AddedOperator, IssuedToken, NewOperator, NewTokenFor, TokensQuery, WhoAmI,
};
use crate::store::{AuditEntry, AuditVerdict};

/// Makes the schema of a type (a `$ref` into `components/schemas` for a
/// named one).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// One route of the router.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// `get`, `post` or `delete`.
    pub method: &'static str,
    /// The OpenAPI path (`{name}` for a path parameter).
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Who may call it.
    pub auth: Auth,
    /// Its query parameters, as the type the handler reads.
    pub query: Option<SchemaFn>,
    /// Its request body.
    pub request: Body,
    /// Its answer's body.
    pub response: Body,
    /// Its success statuses.
    pub ok: &'static [u16],
}

/// `{"status": "ok"}` of `/healthz` and `/readyz`.
#[derive(JsonSchema)]
#[allow(dead_code)] // a schema only
struct StatusBody {
    /// `ok` or `ready`.
    status: String,
}

/// The provisioning bundle (`vouch_proto::anchor::AnchorBundle`, which the
/// protocol crate defines without a schema dependency); a test checks that
/// the two serialize to the same fields.
#[derive(JsonSchema)]
#[schemars(rename = "AnchorBundle")]
#[allow(dead_code)] // a schema only
pub(crate) struct AnchorBundleSchema {
    /// `vouch-anchor-bundle/2`.
    format: String,
    /// The protocol version the device will speak.
    protocol_version: u8,
    /// The suite.
    suite: u8,
    /// The anchor-update serial the device starts from.
    serial: u32,
    /// The anchor: hellos seal to it, it alone vouches.
    anchor: BundleAnchorSchema,
    /// The commitment to the next anchor, 64 hex digits.
    next: String,
}

/// One anchor of a bundle, keys in hex.
#[derive(JsonSchema)]
#[schemars(rename = "BundleAnchor")]
#[allow(dead_code)] // a schema only
pub(crate) struct BundleAnchorSchema {
    /// Key id.
    kid: u8,
    /// Ed25519 public key, 64 hex digits.
    signing: String,
    /// X25519 public key, 64 hex digits.
    sealing: String,
}

/// Every route.
pub const ROUTES: &[Route] = &[
    Route {
        method: "post",
        path: route::VOUCH,
        summary: "Vouch for one peripheral hello (SPEC.md §5.3)",
        auth: Auth::Gateway,
        query: None,
        request: Body::Postcard("VouchRequest"),
        response: Body::Postcard("VouchAnswer"),
        ok: &[200],
    },
    Route {
        method: "post",
        path: route::VOUCH_BATCH,
        summary: "Vouch for up to 64 hellos",
        auth: Auth::Gateway,
        query: None,
        request: Body::Postcard("VouchBatchRequest"),
        response: Body::Postcard("VouchBatchAnswer"),
        ok: &[200],
    },
    Route {
        method: "get",
        path: route::FEED,
        summary: "Revocation feed long-poll (query: after, wait_ms)",
        auth: Auth::Gateway,
        query: Some(schema::<FeedQuery>),
        request: Body::None,
        response: Body::Postcard("FeedBatch"),
        ok: &[200],
    },
    Route {
        method: "post",
        path: route::SESSIONS,
        summary: "Report session attach/detach events",
        auth: Auth::Gateway,
        query: None,
        request: Body::Postcard("SessionReport"),
        response: Body::Postcard("SessionReportAnswer"),
        ok: &[200],
    },
    Route {
        method: "get",
        path: route::ANCHOR_UPDATES,
        summary: "Signed trust-anchor updates after a serial, for peripherals in session (query: after; SPEC.md §10.6)",
        auth: Auth::Gateway,
        query: Some(schema::<AnchorUpdatesQuery>),
        request: Body::None,
        response: Body::Postcard("AnchorUpdateBatch"),
        ok: &[200],
    },
    Route {
        method: "post",
        path: route::CERTIFICATE,
        summary: "Renew the calling gateway's client certificate: same key, same CA, a fresh validity (SPEC.md §10.8)",
        auth: Auth::Gateway,
        query: None,
        request: Body::Postcard("CertificateRenewal"),
        response: Body::Postcard("CertificateIssued"),
        ok: &[200],
    },
    Route {
        method: "get",
        path: route::admin::PERIPHERALS,
        summary: "List peripherals (query: status, group, after, limit)",
        auth: Auth::Role(Role::Viewer),
        query: Some(schema::<ListQuery>),
        request: Body::None,
        response: Body::Json(schema::<Page<PeripheralRecord>>),
        ok: &[200],
    },
    Route {
        method: "post",
        path: route::admin::PERIPHERALS,
        summary: "Enroll a peripheral",
        auth: Auth::Role(Role::Operator),
        query: None,
        request: Body::Json(schema::<EnrollPeripheral>),
        response: Body::Json(schema::<Enrolled<PeripheralRecord>>),
        ok: &[200, 201],
    },
    Route {
        method: "post",
        path: route::admin::PERIPHERALS_IMPORT,
        summary: "Bulk enroll (query: format=csv|ndjson, dry_run)",
        auth: Auth::Role(Role::Operator),
        query: Some(schema::<ImportQuery>),
        request: Body::Text,
        response: Body::Json(schema::<ImportAnswer>),
        ok: &[200],
    },
    Route {
        method: "get",
        path: route::admin::PERIPHERAL,
        summary: "Show a peripheral",
        auth: Auth::Role(Role::Viewer),
        query: None,
        request: Body::None,
        response: Body::Json(schema::<PeripheralView>),
        ok: &[200],
    },
    Route {
        method: "post",
        path: route::admin::PERIPHERAL_ACTION,
        summary: "activate, suspend, reinstate or revoke a peripheral",
        auth: Auth::Role(Role::Operator),
        query: None,
        request: Body::None,
        response: Body::Json(schema::<PeripheralRecord>),
        ok: &[200],
    },
    Route {
        method: "get",
        path: route::admin::GATEWAYS,
        summary: "List gateways (query: status, group, site, after, limit)",
        auth: Auth::Role(Role::Viewer),
        query: Some(schema::<ListQuery>),
        request: Body::None,
        response: Body::Json(schema::<Page<GatewayRecord>>),
        ok: &[200],
    },
    Route {
        method: "post",
        path: route::admin::GATEWAYS,
        summary: "Enroll a gateway; returns its TLS client certificate",
        auth: Auth::Role(Role::Operator),
        query: None,
        request: Body::Json(schema::<EnrollGateway>),
        response: Body::Json(schema::<GatewayEnrolled>),
        ok: &[200, 201],
    },
    Route {
        method: "get",
        path: route::admin::GATEWAY,
        summary: "Show a gateway",
        auth: Auth::Role(Role::Viewer),
        query: None,
        request: Body::None,
        response: Body::Json(schema::<GatewayView>),
        ok: &[200],
    },
    Route {
        method: "post",
        path: route::admin::GATEWAY_ACTION,
        summary: "activate, suspend, reinstate or revoke a gateway",
        auth: Auth::Role(Role::Operator),
        query: None,
        request: Body::None,
        response: Body::Json(schema::<GatewayRecord>),
        ok: &[200],
    },
    Route {
        method: "get",
        path: route::admin::POLICIES,
        summary: "List policy rules",
        auth: Auth::Role(Role::Viewer),
        query: None,
        request: Body::None,
        response: Body::Json(schema::<Vec<PolicyRule>>),
        ok: &[200],
    },
    Route {
        method: "post",
        path: route::admin::POLICIES,
        summary: "Add a policy rule",
        auth: Auth::Role(Role::Operator),
        query: None,
        request: Body::Json(schema::<NewPolicy>),
        response: Body::Json(schema::<PolicyRule>),
        ok: &[201],
    },
    Route {
        method: "delete",
        path: route::admin::POLICY,
        summary: "Remove a policy rule",
        auth: Auth::Role(Role::Admin),
        query: None,
        request: Body::None,
        response: Body::None,
        ok: &[204],
    },
    Route {
        method: "get",
        path: route::admin::AUDIT,
        summary: "Query the audit log (query: peripheral, gateway, action, since, until, after, limit)",
        auth: Auth::Role(Role::Viewer),
        query: Some(schema::<AuditQuery>),
        request: Body::None,
        response: Body::Json(schema::<Page<AuditEntry>>),
        ok: &[200],
    },
    Route {
        method: "get",
        path: route::admin::AUDIT_VERIFY,
        summary: "Recompute the audit hash chain",
        auth: Auth::Role(Role::Viewer),
        query: None,
        request: Body::None,
        response: Body::Json(schema::<AuditVerdict>),
        ok: &[200],
    },
    Route {
        method: "get",
        path: route::admin::LOCKOUTS,
        summary: "Lockouts in force",
        auth: Auth::Role(Role::Viewer),
        query: None,
        request: Body::None,
        response: Body::Json(schema::<Vec<Lockout>>),
        ok: &[200],
    },
    Route {
        method: "delete",
        path: route::admin::LOCKOUT,
        summary: "Lift a lockout",
        auth: Auth::Role(Role::Operator),
        query: None,
        request: Body::None,
        response: Body::None,
        ok: &[204],
    },
    Route {
        method: "get",
        path: route::admin::ANCHOR,
        summary: "The peripheral provisioning bundle: the current anchors and the last update serial",
        auth: Auth::Role(Role::Viewer),
        query: None,
        request: Body::None,
        response: Body::Json(schema::<AnchorBundleSchema>),
        ok: &[200],
    },
    Route {
        method: "get",
        path: route::admin::WHOAMI,
        summary: "Who the presented token belongs to: operator name, role, token id",
        auth: Auth::Role(Role::Viewer),
        query: None,
        request: Body::None,
        response: Body::Json(schema::<WhoAmI>),
        ok: &[200],
    },
    Route {
        method: "get",
        path: route::admin::OPERATORS,
        summary: "List operators, removed ones too",
        auth: Auth::Role(Role::Admin),
        query: None,
        request: Body::None,
        response: Body::Json(schema::<Vec<OperatorRecord>>),
        ok: &[200],
    },
    Route {
        method: "post",
        path: route::admin::OPERATORS,
        summary: "Add an operator with a role; answers its first token, once",
        auth: Auth::Role(Role::Admin),
        query: None,
        request: Body::Json(schema::<NewOperator>),
        response: Body::Json(schema::<AddedOperator>),
        ok: &[201],
    },
    Route {
        method: "delete",
        path: route::admin::OPERATOR,
        summary: "Remove an operator: its tokens stop working, the name stays taken",
        auth: Auth::Role(Role::Admin),
        query: None,
        request: Body::None,
        response: Body::None,
        ok: &[204],
    },
    Route {
        method: "get",
        path: route::admin::TOKENS,
        summary: "List API tokens (query: operator); never a secret",
        auth: Auth::Role(Role::Admin),
        query: Some(schema::<TokensQuery>),
        request: Body::None,
        response: Body::Json(schema::<Vec<TokenRecord>>),
        ok: &[200],
    },
    Route {
        method: "post",
        path: route::admin::TOKENS,
        summary: "Another token for an operator; answers it, once",
        auth: Auth::Role(Role::Admin),
        query: None,
        request: Body::Json(schema::<NewTokenFor>),
        response: Body::Json(schema::<IssuedToken>),
        ok: &[201],
    },
    Route {
        method: "delete",
        path: route::admin::TOKEN,
        summary: "Revoke a token",
        auth: Auth::Role(Role::Admin),
        query: None,
        request: Body::None,
        response: Body::None,
        ok: &[204],
    },
    Route {
        method: "post",
        path: route::admin::TOKEN_ROTATE,
        summary: "Rotate a token: a new one for the same operator, the old one revoked",
        auth: Auth::Role(Role::Admin),
        query: None,
        request: Body::None,
        response: Body::Json(schema::<IssuedToken>),
        ok: &[201],
    },
    Route {
        method: "get",
        path: route::HEALTHZ,
        summary: "Liveness",
        auth: Auth::None,
        query: None,
        request: Body::None,
        response: Body::Json(schema::<StatusBody>),
        ok: &[200],
    },
    Route {
        method: "get",
        path: route::READYZ,
        summary: "Readiness (database reachable)",
        auth: Auth::None,
        query: None,
        request: Body::None,
        response: Body::Json(schema::<StatusBody>),
        ok: &[200],
    },
    Route {
        method: "get",
        path: route::METRICS,
        summary: "Prometheus metrics (refusals by cause: admin token; without one on the loopback `ops_listen` only)",
        auth: Auth::Role(Role::Viewer),
        query: None,
        request: Body::None,
        response: Body::Text,
        ok: &[200],
    },
    Route {
        method: "get",
        path: route::OPENAPI,
        summary: "This document",
        auth: Auth::None,
        query: None,
        request: Body::None,
        response: Body::Json(schema::<serde_json::Value>),
        ok: &[200],
    },
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
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// No body.
    None,
    /// `application/vnd.vouch.v1+postcard` carrying the named `vouch_proto::wire::backend` type.
    Postcard(&'static str),
    /// `application/json` with the schema of a type.
    Json(SchemaFn),
    /// `text/plain` (or CSV / NDJSON for imports).
    Text,
}

fn content(b: Body, g: &mut SchemaGenerator) -> Option<Value> {
    match b {
        Body::None => None,
        Body::Postcard(t) => Some(json!({
            "application/vnd.vouch.v1+postcard": {
                "schema": { "type": "string", "format": "binary",
                            "description": format!("1 ‖ postcard({t}), see vouch_proto::wire::backend and SPEC.md §10") }
            }
        })),
        Body::Json(f) => Some(json!({ "application/json": { "schema": f(g).to_value() } })),
        Body::Text => Some(json!({ "text/plain": { "schema": { "type": "string" } } })),
    }
}

/// The query parameters of a query type: one per property, required where
/// the type requires it.
fn query_parameters(f: SchemaFn) -> Vec<Value> {
    // Inline: a parameter's schema stands alone (an enum of a query,
    // `format=csv|ndjson`, is written out, not referenced).
    let mut g = settings()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let root = f(&mut g);
    // A named type is a reference: read the definition it points at.
    let defs = g.take_definitions(true);
    let object = match root.get("$ref").and_then(Value::as_str) {
        Some(r) => defs
            .get(r.rsplit('/').next().unwrap_or_default())
            .cloned()
            .unwrap_or(Value::Null),
        None => root.to_value(),
    };
    let required: Vec<&str> = object["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    object["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(name, schema)| {
                    let mut schema = schema.clone();
                    let description = schema.as_object_mut().and_then(|o| o.remove("description"));
                    let mut p = json!({
                        "name": name,
                        "in": "query",
                        "required": required.contains(&name.as_str()),
                        "schema": schema,
                    });
                    if let Some(d) = description {
                        p["description"] = d;
                    }
                    p
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The schema of a path parameter: what the handler parses it as.
fn path_parameter(path: &str, name: &str) -> Value {
    let hex = |n: usize| json!({ "type": "string", "pattern": format!("^[0-9a-fA-F]{{{n}}}$") });
    match (name, path) {
        ("id", p) if p.starts_with("/v1/admin/peripherals") => hex(16),
        ("id", p) if p.starts_with("/v1/admin/policies") => {
            json!({ "type": "string", "pattern": "^[0-9]{1,18}$" })
        }
        ("id", p) if p.starts_with("/v1/admin/tokens") => {
            json!({ "type": "string", "pattern": "^([0-9a-f]{12}|init)$" })
        }
        ("key", _) => hex(64),
        ("action", _) => {
            json!({ "type": "string", "enum": ["activate", "suspend", "reinstate", "revoke"] })
        }
        ("name", _) => json!({ "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$" }),
        ("subject", _) => {
            json!({ "type": "string", "description": "`peripheral:ID` or `gateway:KEY`" })
        }
        _ => json!({ "type": "string" }),
    }
}

fn settings() -> SchemaSettings {
    SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
    })
}

/// The error answer, with every stable code.
fn error_schema() -> Value {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": { "type": "string", "enum": codes, "description": "stable machine-readable code" },
                    "message": { "type": "string" }
                }
            }
        }
    })
}

/// The document.
pub fn document() -> Value {
    let mut g = settings().into_generator();
    let mut paths = Map::new();
    for r in ROUTES {
        let mut op = Map::new();
        op.insert("summary".into(), json!(r.summary));
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": path_parameter(r.path, name) }))
            .collect();
        if let Some(q) = r.query {
            params.extend(query_parameters(q));
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        match r.auth {
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
        if let Some(c) = content(r.request, &mut g) {
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": c }),
            );
        }
        let error =
            json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } });
        let mut responses = Map::new();
        for status in r.ok {
            let mut ok = json!({ "description": "success" });
            if *status != 204 {
                if let Some(c) = content(r.response, &mut g) {
                    ok["content"] = c;
                }
            }
            responses.insert(status.to_string(), ok);
        }
        responses.insert(
            "4XX".into(),
            json!({ "description": "the request is refused: the code says why", "content": error }),
        );
        responses.insert(
            "503".into(),
            json!({ "description": "overloaded, timed out or store unavailable; retry after Retry-After", "content": error }),
        );
        op.insert("responses".into(), Value::Object(responses));
        let entry = paths
            .entry(r.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(r.method.to_owned(), Value::Object(op));
        }
    }
    let mut schemas = g.take_definitions(true);
    schemas.insert("Error".into(), error_schema());
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
            "schemas": Value::Object(schemas)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Follows a `$ref` into the document's schemas.
    fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap_or_default()],
            None => schema,
        }
    }

    #[test]
    fn every_json_body_has_a_schema_generated_from_its_type() {
        let doc = document();
        let mut bodies = 0;
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method];
            let mut schemas: Vec<&Value> = Vec::new();
            if let Body::Json(_) = r.request {
                schemas.push(&op["requestBody"]["content"]["application/json"]["schema"]);
            }
            if let Body::Json(_) = r.response {
                for s in r.ok.iter().filter(|s| **s != 204) {
                    schemas.push(
                        &op["responses"][s.to_string()]["content"]["application/json"]["schema"],
                    );
                }
            }
            for s in schemas {
                bodies += 1;
                let s = resolve(&doc, s);
                let described = s["properties"].is_object()
                    || s["items"].is_object()
                    || s["oneOf"].is_array()
                    || s.as_bool() == Some(true);
                assert!(described, "{} {}: {s}", r.method, r.path);
            }
        }
        assert!(bodies >= 25, "{bodies}");
        // A page of peripherals says what a peripheral is.
        let page = resolve(
            &doc,
            &doc["paths"]["/v1/admin/peripherals"]["get"]["responses"]["200"]["content"]
                ["application/json"]["schema"],
        );
        let item = resolve(&doc, &page["properties"]["items"]["items"]);
        for field in [
            "id",
            "public_key",
            "status",
            "group",
            "attributes",
            "created_ms",
        ] {
            assert!(item["properties"][field].is_object(), "{field}: {item}");
        }
        assert_eq!(
            item["properties"]["id"]["type"], "string",
            "ids are written as hex strings"
        );
        // Query parameters come from the handler's query type.
        let params = doc["paths"]["/v1/admin/peripherals"]["get"]["parameters"]
            .as_array()
            .expect("parameters");
        let names: Vec<&str> = params.iter().filter_map(|p| p["name"].as_str()).collect();
        for n in ["status", "group", "attribute", "after", "limit"] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        // Every error code is in the error schema.
        let codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
            ["code"]["enum"]
            .as_array()
            .expect("codes")
            .len();
        assert_eq!(codes, ErrorCode::ALL.len());
    }

    #[test]
    fn the_anchor_bundle_schema_has_the_bundle_s_fields() {
        use vouch_proto::handshake::backend::BackendKeys;
        use vouch_proto::keys::{IdentityKey, KeyId, SealingKey};
        let pair = |kid, a, b| {
            BackendKeys::from_parts(
                KeyId(kid),
                IdentityKey::from_seed(&[a; 32]),
                SealingKey::from_bytes([b; 32]),
            )
        };
        let (keys, next) = (pair(1, 1, 2), pair(2, 3, 4));
        let set = vouch_proto::anchor::AnchorSet::new(keys.anchor(), next.anchor().digest(), 0);
        let bundle = serde_json::to_value(crate::anchor::bundle(&set)).expect("json");
        let doc = document();
        let schema = &doc["components"]["schemas"]["AnchorBundle"];
        let fields = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            k.sort();
            k
        };
        assert_eq!(fields(&schema["properties"]), fields(&bundle));
        assert_eq!(
            fields(&doc["components"]["schemas"]["BundleAnchor"]["properties"]),
            fields(&bundle["anchor"])
        );
    }
}
