//! The console's pages: each reads what it shows through the same store and
//! registry functions as the admin API, and renders it with `maud` (every
//! interpolated value escaped).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Html;
use maud::{html, Markup, DOCTYPE};

use super::{operator, Operator, Params, Refused};
use crate::access::Role;
use crate::model::{Status, Transition};
use crate::registry;
use crate::store::{now_ms, GatewayFilter, PeripheralFilter, Rfc3339};
use crate::AppState;

/// Rows on a list page.
const PAGE: u32 = 50;

type Page = Result<Html<String>, Refused>;

fn time(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |t| Rfc3339(t).to_string())
}

fn layout(op: &Operator, here: &str, title: &str, body: Markup) -> Html<String> {
    let nav = [
        ("/console", "Overview"),
        ("/console/devices", "Devices"),
        ("/console/gateways", "Gateways"),
        ("/console/policies", "Policies"),
        ("/console/lockouts", "Lockouts"),
        ("/console/keys", "Keys"),
        ("/console/audit", "Audit"),
        ("/console/import", "Import"),
    ];
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · Vouch" }
                    link rel="stylesheet" href="/console/static/console.css";
                }
                body {
                    header {
                        span.brand { "Vouch" }
                        nav {
                            @for (href, name) in nav {
                                a href=(href) class=[(href == here).then_some("here")] { (name) }
                            }
                        }
                        div.who {
                            span { (op.caller.name) " · " (op.caller.role) }
                            form method="post" action="/console/logout" {
                                input type="hidden" name="csrf" value=(op.csrf);
                                button.quiet type="submit" { "Log out" }
                            }
                        }
                    }
                    main { h1 { (title) } (body) }
                }
            }
        }
        .into_string(),
    )
}

/// A page with only a message (errors, refusals).
pub(super) fn message_page(status: StatusCode, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (status.as_u16()) " · Vouch" }
                link rel="stylesheet" href="/console/static/console.css";
            }
            body { main {
                h1 { (status) }
                p.error { (message) }
                p { a href="/console" { "Back to the console" } }
            } }
        }
    }
}

/// The login page, with an error if the last try failed.
pub(super) fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Log in · Vouch" }
                link rel="stylesheet" href="/console/static/console.css";
            }
            body {
                form.login method="post" action="/console/login" {
                    h1 { "Vouch console" }
                    @if let Some(e) = error { p.error { (e) } }
                    label { "Operator token"
                        input type="password" name="token" autocomplete="off" required autofocus;
                    }
                    p.note { "An operator's API token (vouch-backend operators add NAME --role ROLE)." }
                    button type="submit" { "Log in" }
                }
            }
        }
    }
}

fn status_class(s: &str) -> String {
    format!("status-{s}")
}

pub(super) async fn overview(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let op = operator(&state, &headers, Role::Viewer).await?;
    let now = now_ms();
    let within = registry::online_within(state.config.limits.feed_wait_max_ms);
    let (counts, o) = super::overview_counts(&state, now, now - within.as_millis() as i64).await?;
    let lockouts = state.store.active_lockouts(now).await?;
    let total: i64 = counts.values().sum();
    Ok(layout(
        &op,
        "/console",
        "Overview",
        html! {
            div.cards {
                div.card { div.n { (total) } div.l { "devices" } }
                @for s in ["active", "pending", "suspended", "revoked"] {
                    a.card href={ "/console/devices?status=" (s) } {
                        div.n { (counts.get(s).copied().unwrap_or(0)) } div.l { (s) }
                    }
                }
                a.card href="/console/gateways" {
                    div.n { (o.gateways_online) " / " (o.gateways) } div.l { "gateways online" }
                }
                a.card href="/console/lockouts" { div.n { (lockouts.len()) } div.l { "lockouts in force" } }
                a.card href="/console/audit?action=lockout" { div.n { (o.alerts_last_day) } div.l { "alerts, last 24 h" } }
            }
            h2 { "Vouch decisions, last hour" }
            table {
                tr { th { "outcome" } th { "count" } }
                @for (outcome, n) in &o.vouches_last_hour {
                    tr { td { (outcome) } td { (n) } }
                }
                @if o.vouches_last_hour.is_empty() { tr { td colspan="2" { "none" } } }
            }
            p.note { "Refusals repeated within a summary interval are counted into one audit entry each (see the audit log's detail)." }
        },
    ))
}

/// The query of a list's next page: its cursor and the filters given.
fn next_page_query(after: &str, filters: &[(&str, &Option<String>)]) -> String {
    let mut q = vec![("after", after.to_owned())];
    for (k, v) in filters {
        if let Some(v) = v.as_deref().filter(|v| !v.trim().is_empty()) {
            q.push((k, v.to_owned()));
        }
    }
    serde_urlencoded::to_string(q).unwrap_or_default()
}

fn filter_field(name: &str, label: &str, value: &Option<String>) -> Markup {
    html! {
        label { (label) input type="text" name=(name) value=[value.as_deref()]; }
    }
}

pub(super) async fn devices(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(p): Params,
) -> Page {
    let op = operator(&state, &headers, Role::Viewer).await?;
    // An id goes straight to its page.
    if let Some(id) = p.id.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        let id = registry::parse_id(id)?;
        return device_page(&state, &op, &id.to_string(), None).await;
    }
    let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    let status = registry::parse_status(&nonempty(&p.status))?;
    let filter = PeripheralFilter {
        status,
        group: nonempty(&p.group),
        attribute: nonempty(&p.attribute)
            .as_deref()
            .map(registry::parse_attribute_filter)
            .transpose()?,
        after: nonempty(&p.after)
            .as_deref()
            .map(registry::parse_id)
            .transpose()?,
        limit: PAGE,
    };
    let items = state.store.list_peripherals(&filter).await?;
    let next = (items.len() == PAGE as usize)
        .then(|| items.last().map(|d| d.id.to_string()))
        .flatten();
    let keep = |after: &str| {
        next_page_query(
            after,
            &[
                ("status", &p.status),
                ("group", &p.group),
                ("attribute", &p.attribute),
            ],
        )
    };
    Ok(layout(
        &op,
        "/console/devices",
        "Devices",
        html! {
            form.filters method="get" action="/console/devices" {
                (filter_field("id", "id (16 hex)", &None))
                (filter_field("group", "group", &p.group))
                label { "status"
                    select name="status" {
                        option value="" { "any" }
                        @for s in ["active", "pending", "suspended", "revoked"] {
                            option value=(s) selected[p.status.as_deref() == Some(s)] { (s) }
                        }
                    }
                }
                (filter_field("attribute", "attribute (name=value)", &p.attribute))
                button type="submit" { "Search" }
            }
            table {
                tr { th { "id" } th { "status" } th { "group" } th { "attributes" } th { "enrolled" } }
                @for d in &items {
                    tr {
                        td.mono { a href={ "/console/devices/" (d.id) } { (d.id) } }
                        td class=(status_class(d.status.as_str())) { (d.status) }
                        td { (d.group.as_deref().unwrap_or("-")) }
                        td { @for (k, v) in &d.attributes { (k) "=" (v) " " } }
                        td { (time(Some(d.created_ms))) }
                    }
                }
                @if items.is_empty() { tr { td colspan="5" { "no device matches" } } }
            }
            @if let Some(n) = &next {
                p.pager { a.button href={ "/console/devices?" (keep(n)) } { "Next page" } }
            }
        },
    ))
}

pub(super) async fn device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(p): Params,
) -> Page {
    let op = operator(&state, &headers, Role::Viewer).await?;
    device_page(&state, &op, &id, p.done.as_deref()).await
}

async fn device_page(state: &AppState, op: &Operator, id: &str, done: Option<&str>) -> Page {
    let id = registry::parse_id(id)?;
    let view = registry::peripheral_view(&state.store, &id).await?;
    let d = &view.record;
    let audit = state
        .store
        .audit_query(&registry::audit_filter(
            Some(id.to_string()),
            None,
            None,
            None,
            None,
            None,
            20,
        )?)
        .await?;
    let actions = actions_for(d.status);
    Ok(layout(
        op,
        "/console/devices",
        &format!("Device {id}"),
        html! {
            @if let Some(done) = done.filter(|d| device_transition(d).is_ok()) { p.fine { "Done: " (done) "." } }
            dl {
                dt { "status" } dd class=(status_class(d.status.as_str())) { (d.status) }
                dt { "public key" } dd.mono { (d.public_key) }
                dt { "group" } dd { (d.group.as_deref().unwrap_or("-")) }
                dt { "attributes" } dd { @for (k, v) in &d.attributes { (k) "=" (v) " " } }
                dt { "last seen" } dd { (time(view.presence.last_seen_ms)) }
                dt { "attached to" } dd.mono {
                    @match &view.presence.gateway {
                        Some(g) => a href={ "/console/gateways/" (g) } { (g) },
                        None => "-",
                    }
                }
                dt { "last vouch via" } dd.mono { (view.presence.last_vouch_gateway.as_deref().unwrap_or("-")) }
                dt { "enrolled" } dd { (time(Some(d.created_ms))) }
                dt { "changed" } dd { (time(Some(d.updated_ms))) }
            }
            @if op.can(Role::Operator) && !actions.is_empty() {
                div.actions {
                    @for a in &actions {
                        a.button.danger[*a == "revoke"] href={ "/console/devices/" (id) "/" (a) } { (a) }
                    }
                }
            }
            h2 { "Recent audit entries" }
            (audit_table(&audit))
            p { a href={ "/console/audit?peripheral=" (id) } { "All of this device's entries" } }
        },
    ))
}

/// The lifecycle transition a console action names.
pub(super) fn device_transition(action: &str) -> Result<Transition, Refused> {
    match action {
        "suspend" => Ok(Transition::Suspend),
        "reinstate" => Ok(Transition::Reinstate),
        "revoke" => Ok(Transition::Revoke),
        _ => Err(Refused::Page(
            StatusCode::NOT_FOUND,
            "no such action (not_found)".into(),
        )),
    }
}

pub(super) async fn confirm_device_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Page {
    let op = operator(&state, &headers, Role::Operator).await?;
    let id = registry::parse_id(&id)?;
    device_transition(&action)?;
    let d = registry::peripheral_view(&state.store, &id).await?.record;
    let what = match action.as_str() {
        "revoke" => "Revoking is final: the device is refused from now on, its live session closes at once on its gateway, and it can never be reinstated.",
        "suspend" => "The device is refused until reinstated; its live session closes at once on its gateway.",
        _ => "The device may attach again (subject to policy).",
    };
    Ok(layout(
        &op,
        "/console/devices",
        &format!("{action} device {id}?"),
        html! {
            p { "Device " span.mono { (id) } " is " strong { (d.status) } "." }
            p { (what) }
            form method="post" action={ "/console/devices/" (id) "/" (action) } {
                input type="hidden" name="csrf" value=(op.csrf);
                input type="hidden" name="confirmed" value="yes";
                div.actions {
                    button.danger[action == "revoke"] type="submit" { "Yes, " (action) }
                    a href={ "/console/devices/" (id) } { "Cancel" }
                }
            }
        },
    ))
}

pub(super) async fn gateways(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(p): Params,
) -> Page {
    let op = operator(&state, &headers, Role::Viewer).await?;
    let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    let filter = GatewayFilter {
        status: registry::parse_status(&nonempty(&p.status))?,
        group: nonempty(&p.group),
        site: nonempty(&p.site),
        after: nonempty(&p.after)
            .as_deref()
            .map(registry::parse_gateway_key)
            .transpose()?,
        limit: PAGE,
    };
    let items = state.store.list_gateways(&filter).await?;
    let now = now_ms();
    let within = registry::online_within(state.config.limits.feed_wait_max_ms).as_millis() as i64;
    let next = (items.len() == PAGE as usize)
        .then(|| items.last().map(|g| g.public_key.to_string()))
        .flatten();
    Ok(layout(
        &op,
        "/console/gateways",
        "Gateways",
        html! {
            form.filters method="get" action="/console/gateways" {
                (filter_field("site", "site", &p.site))
                (filter_field("group", "group", &p.group))
                button type="submit" { "Filter" }
            }
            table {
                tr { th { "key" } th { "name" } th { "site" } th { "status" } th { "online" } th { "last poll" } th { "certificate expires" } }
                @for g in &items {
                    tr {
                        td.mono { a href={ "/console/gateways/" (g.public_key) } { (g.public_key.to_string()[..16]) "…" } }
                        td { (g.name.as_deref().unwrap_or("-")) }
                        td { (g.site.as_deref().unwrap_or("-")) }
                        td class=(status_class(g.status.as_str())) { (g.status) }
                        td { @if g.last_poll_ms.is_some_and(|t| now - t <= within) { "yes" } @else { "no" } }
                        td { (time(g.last_poll_ms)) }
                        td { (time(g.certificate_expires_ms)) }
                    }
                }
                @if items.is_empty() { tr { td colspan="7" { "no gateway matches" } } }
            }
            @if let Some(n) = &next {
                p.pager { a.button href={ "/console/gateways?after=" (n) } { "Next page" } }
            }
        },
    ))
}

pub(super) async fn gateway(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    axum::extract::Query(p): Params,
) -> Page {
    let op = operator(&state, &headers, Role::Viewer).await?;
    let key = registry::parse_gateway_key(&key)?;
    let within = registry::online_within(state.config.limits.feed_wait_max_ms);
    let v = registry::gateway_view(&state.store, &key, within).await?;
    let g = &v.record;
    let actions = actions_for(g.status);
    let audit = state
        .store
        .audit_query(&registry::audit_filter(
            None,
            Some(key.to_string()),
            None,
            None,
            None,
            None,
            20,
        )?)
        .await?;
    Ok(layout(
        &op,
        "/console/gateways",
        &format!("Gateway {}", g.name.as_deref().unwrap_or("(unnamed)")),
        html! {
            @if let Some(done) = p.done.as_deref().filter(|d| device_transition(d).is_ok()) { p.fine { "Done: " (done) "." } }
            dl {
                dt { "key" } dd.mono { (g.public_key) }
                dt { "status" } dd class=(status_class(g.status.as_str())) { (g.status) }
                dt { "site" } dd { (g.site.as_deref().unwrap_or("-")) }
                dt { "group" } dd { (g.group.as_deref().unwrap_or("-")) }
                dt { "online" } dd { @if v.online { "yes" } @else { "no" } }
                dt { "last feed poll" } dd { (time(g.last_poll_ms)) }
                dt { "live sessions" } dd { (v.live_sessions) }
                dt { "certificate expires" } dd { (time(g.certificate_expires_ms)) }
            }
            @if op.can(Role::Operator) && !actions.is_empty() {
                div.actions {
                    @for a in &actions {
                        a.button.danger[*a == "revoke"] href={ "/console/gateways/" (g.public_key) "/" (a) } { (a) }
                    }
                }
            }
            h2 { "Recent audit entries" }
            (audit_table(&audit))
        },
    ))
}

/// The lifecycle actions a subject in `status` allows.
fn actions_for(status: Status) -> Vec<&'static str> {
    [
        ("suspend", status == Status::Active),
        ("reinstate", status == Status::Suspended),
        ("revoke", status != Status::Revoked),
    ]
    .into_iter()
    .filter_map(|(a, ok)| ok.then_some(a))
    .collect()
}

pub(super) async fn confirm_gateway_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((key, action)): Path<(String, String)>,
) -> Page {
    let op = operator(&state, &headers, Role::Operator).await?;
    let key = registry::parse_gateway_key(&key)?;
    device_transition(&action)?;
    let within = registry::online_within(state.config.limits.feed_wait_max_ms);
    let v = registry::gateway_view(&state.store, &key, within).await?;
    let what = match action.as_str() {
        "revoke" => "Revoking is final: the gateway is refused from now on, every session it holds closes, and it can never be reinstated.",
        "suspend" => "The gateway is refused until reinstated; every session it holds closes.",
        _ => "The gateway may vouch for devices again (subject to policy).",
    };
    Ok(layout(
        &op,
        "/console/gateways",
        &format!(
            "{action} gateway {}?",
            v.record.name.as_deref().unwrap_or("(unnamed)")
        ),
        html! {
            p { "Gateway " span.mono { (key) } " is " strong { (v.record.status) } ", with " (v.live_sessions) " live sessions." }
            p { (what) }
            form method="post" action={ "/console/gateways/" (key) "/" (action) } {
                input type="hidden" name="csrf" value=(op.csrf);
                input type="hidden" name="confirmed" value="yes";
                div.actions {
                    button.danger[action == "revoke"] type="submit" { "Yes, " (action) }
                    a href={ "/console/gateways/" (key) } { "Cancel" }
                }
            }
        },
    ))
}

pub(super) async fn keys(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let op = operator(&state, &headers, Role::Viewer).await?;
    let rows = state.store.key_rows().await?;
    let fleet = crate::keyring::fleet(&state.store)
        .await
        .map_err(|e| match e {
            crate::keyring::KeyRingError::Store(e) => Refused::from(e),
            other => Refused::Page(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
        })?;
    let now = now_ms();
    let instances: Vec<_> = state
        .store
        .instances()
        .await?
        .into_iter()
        .filter(|i| i.live_at(now))
        .collect();
    let current = fleet.primary().kid;
    let by_key = state.store.devices_by_key().await?;
    let devices_on = |kid: u8| {
        by_key
            .iter()
            .find(|(k, _)| *k == Some(i64::from(kid)))
            .map_or(0, |(_, n)| *n)
    };
    let unrecorded = by_key
        .iter()
        .find(|(k, _)| k.is_none())
        .map_or(0, |(_, n)| *n);
    Ok(layout(
        &op,
        "/console/keys",
        "Backend keys",
        html! {
            p { "New devices are provisioned with key " strong { (current.0) } " and the commitment to its successor, at anchor-update serial " (fleet.serial()) " (vouch-backend export-anchor). Devices in session learn every later update from their gateway." }
            table {
                tr { th { "key id" } th { "signing key" } th { "added at serial" } th { "retired at serial" } th { "private key" } th { "devices on it" } th { "created" } }
                @for k in &rows {
                    tr {
                        td { (k.anchor.kid.0) @if k.anchor.kid == current { " (current)" } }
                        td.mono { (k.anchor.signing) }
                        td { @match k.added_serial { Some(n) => (n), None => "next (committed, not announced)" } }
                        td { @match k.retired_serial { Some(n) => (n), None => "-" } }
                        td { @if k.purged_ms.is_some() { "purged" } @else { "kept" } }
                        td { (devices_on(k.anchor.kid.0)) }
                        td { (time(Some(k.created_ms))) }
                    }
                }
            }
            p.note {
                "Devices on a key: devices whose latest vouch at one of their gateways that key signed (a device that sealed its hello to it). "
                @if unrecorded > 0 { (unrecorded) " devices were last vouched for before the key was recorded with the vouch (the audit entry's detail names it). " }
                "Purge a key once no device is on it."
            }
            h2 { "Live instances" }
            table {
                tr { th { "host" } th { "serves" } th { "holds" } th { "started" } }
                @for i in &instances {
                    tr {
                        td { (i.host) }
                        td { @for k in &i.serves { (k) " " } }
                        td { @for k in &i.holds { (k) " " } }
                        td { (time(Some(i.started_ms))) }
                    }
                }
            }
            p.note { "Rotation, retirement and purging are CLI verbs on a backend host (vouch-backend keys --help): they write private keys into its data directory." }
        },
    ))
}

/// A long actor (`gateway:` and 64 hex digits) cut to its first 16 digits;
/// the whole one is the cell's title.
fn short(actor: &str) -> String {
    match actor.split_once(':') {
        Some((kind, id)) if id.len() > 20 => format!("{kind}:{}…", &id[..16]),
        _ => actor.to_owned(),
    }
}

fn audit_table(entries: &[crate::store::AuditEntry]) -> Markup {
    html! {
        table {
            tr { th { "seq" } th { "time" } th { "action" } th { "outcome" } th { "actor" } th { "peripheral" } th { "detail" } }
            @for e in entries {
                tr {
                    td { (e.seq) }
                    td { (e.at) }
                    td { (e.action) }
                    td { (e.outcome) @if !e.reason.is_empty() { " (" (e.reason) ")" } }
                    td title=(e.actor) { (short(&e.actor)) }
                    td.mono { @if let Some(p) = &e.peripheral { a href={ "/console/devices/" (p) } { (p) } } @else { "-" } }
                    td.mono { (e.detail) }
                }
            }
            @if entries.is_empty() { tr { td colspan="7" { "no entries" } } }
        }
    }
}

pub(super) async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(p): Params,
) -> Page {
    let op = operator(&state, &headers, Role::Viewer).await?;
    let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    let after = nonempty(&p.after)
        .map(|a| {
            a.parse::<i64>().map_err(|_| {
                Refused::Page(
                    StatusCode::BAD_REQUEST,
                    "after: a sequence number (invalid_query)".into(),
                )
            })
        })
        .transpose()?;
    let filter = registry::audit_filter(
        nonempty(&p.peripheral),
        nonempty(&p.gateway),
        nonempty(&p.action),
        None,
        None,
        after,
        PAGE,
    )?;
    let entries = state.store.audit_query(&filter).await?;
    let next = (entries.len() == PAGE as usize)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    let keep = |after: i64| {
        next_page_query(
            &after.to_string(),
            &[
                ("action", &p.action),
                ("peripheral", &p.peripheral),
                ("gateway", &p.gateway),
            ],
        )
    };
    Ok(layout(
        &op,
        "/console/audit",
        "Audit log",
        html! {
            form.filters method="get" action="/console/audit" {
                (filter_field("action", "action", &p.action))
                (filter_field("peripheral", "peripheral", &p.peripheral))
                (filter_field("gateway", "gateway", &p.gateway))
                button type="submit" { "Filter" }
                a.button href="/console/audit/verify" { "Verify the chain" }
            }
            (audit_table(&entries))
            @if let Some(n) = next {
                p.pager { a.button href={ "/console/audit?" (keep(n)) } { "Next page" } }
            }
        },
    ))
}

pub(super) async fn audit_verify(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let op = operator(&state, &headers, Role::Viewer).await?;
    let verdict = state.store.audit_verify(&state.checkpoint_key).await?;
    Ok(layout(
        &op,
        "/console/audit",
        "Audit chain",
        html! {
            @match &verdict {
                crate::store::AuditVerdict::Intact { entries, head, .. } => p.fine {
                    "Intact: " (entries) " entries, head " span.mono { (head) } "."
                },
                crate::store::AuditVerdict::Broken { seq, problem } => p.error {
                    "Broken at entry " (seq) ": " (problem)
                },
            }
        },
    ))
}

pub(super) async fn lockouts(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let op = operator(&state, &headers, Role::Viewer).await?;
    let items = state.store.active_lockouts(now_ms()).await?;
    Ok(layout(
        &op,
        "/console/lockouts",
        "Lockouts in force",
        html! {
            table {
                tr { th { "subject" } th { "until" } th {} }
                @for (subject, until) in &items {
                    tr {
                        td.mono { (subject) }
                        td { (time(Some(*until))) }
                        td { @if op.can(Role::Operator) {
                            form method="post" action="/console/lockouts/clear" {
                                input type="hidden" name="csrf" value=(op.csrf);
                                input type="hidden" name="subject" value=(subject);
                                button.quiet type="submit" { "Clear" }
                            }
                        } }
                    }
                }
                @if items.is_empty() { tr { td colspan="3" { "none" } } }
            }
        },
    ))
}

pub(super) async fn policies(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let op = operator(&state, &headers, Role::Viewer).await?;
    let rules = state.store.list_policies().await?;
    Ok(layout(
        &op,
        "/console/policies",
        "Policies",
        html! {
            table {
                tr { th { "id" } th { "peripherals" } th { "gateways" } th { "scope" } th { "session s" } th { "resumption s" } th {} }
                @for r in &rules {
                    tr {
                        td { (r.id) }
                        td.mono { (r.peripheral) }
                        td.mono { (r.gateway) }
                        td { (crate::model::scope_names(r.scope)) }
                        td { (r.lifetimes.session_s) }
                        td { (r.lifetimes.resumption_s) }
                        td { @if op.can(Role::Admin) {
                            form method="post" action="/console/policies/remove" {
                                input type="hidden" name="csrf" value=(op.csrf);
                                input type="hidden" name="id" value=(r.id);
                                button.danger type="submit" { "Remove" }
                            }
                        } }
                    }
                }
                @if rules.is_empty() { tr { td colspan="7" { "no rule: no device may attach anywhere" } } }
            }
            @if op.can(Role::Operator) {
                h2 { "Add a rule" }
                form.filters method="post" action="/console/policies" {
                    input type="hidden" name="csrf" value=(op.csrf);
                    label { "peripherals" input type="text" name="peripheral" placeholder="group:meters" required; }
                    label { "gateways" input type="text" name="gateway" placeholder="site:plant-1" required; }
                    label { "scope" input type="text" name="scope" value="telemetry" required; }
                    label { "session s" input type="number" name="session_s" value="3600" min="1" required; }
                    label { "resumption s" input type="number" name="resumption_s" value="86400" min="0" required; }
                    button type="submit" { "Add" }
                }
            }
        },
    ))
}

pub(super) async fn import_page(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let op = operator(&state, &headers, Role::Operator).await?;
    Ok(layout(
        &op,
        "/console/import",
        "Bulk import",
        html! {
            p.note { "Upload or paste CSV (a header row: id, public_key, group, attributes as name=value;…) or NDJSON (one object per line), up to 64 MiB. A dry run checks every row against the registry and writes nothing." }
            form method="post" action="/console/import" enctype="multipart/form-data" {
                input type="hidden" name="csrf" value=(op.csrf);
                div.filters {
                    label { "format"
                        select name="format" { option value="csv" { "CSV" } option value="ndjson" { "NDJSON" } }
                    }
                    label { "dry run" input type="checkbox" name="dry_run" value="yes" checked; }
                    label { "file" input type="file" name="file" accept=".csv,.ndjson,.jsonl,text/csv,application/x-ndjson"; }
                }
                label { "or the rows" textarea name="rows" {} }
                div.actions { button type="submit" { "Import" } }
            }
        },
    ))
}

/// The per-row report of an import.
pub(super) fn import_result(
    op: &Operator,
    summary: &crate::import::Summary,
    rows: &[crate::import::RowReport],
) -> Markup {
    let body = html! {
        p class=(if summary.errors > 0 { "error" } else { "fine" }) {
            @if summary.dry_run { "Dry run, nothing written: " }
            (summary.rows) " rows, " (summary.created) " created, " (summary.unchanged) " unchanged, " (summary.errors) " refused."
        }
        table {
            tr { th { "line" } th { "id" } th { "result" } th { "error" } }
            @for r in rows {
                tr {
                    td { (r.line) }
                    td.mono { (r.id.as_deref().unwrap_or("-")) }
                    td { (r.result) }
                    td { @if let Some(e) = &r.error { (e.message) " (" (e.code) ")" } }
                }
            }
        }
        p { a href="/console/import" { "Import more" } }
    };
    maud::PreEscaped(layout(op, "/console/import", "Import report", body).0)
}
