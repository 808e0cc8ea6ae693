//! Policy rules: which peripherals may attach to which gateways, with what scope and lifetimes.

use sqlx::Row;
use vouch_proto::wire::{Lifetimes, Scope};

use super::{now_ms, Conflict, NewAudit, Store, StoreError};
use crate::model::{GatewaySelector, PeripheralSelector, PolicyRule};

pub(super) fn to_u32(v: i64, table: &'static str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(table))
}

pub(super) fn policy_from_row(row: &sqlx::any::AnyRow) -> Result<PolicyRule, StoreError> {
    const T: &str = "policies";
    let pk: String = row.try_get("peripheral_kind")?;
    let pv: String = row.try_get("peripheral_value")?;
    let gk: String = row.try_get("gateway_kind")?;
    let gv: String = row.try_get("gateway_value")?;
    Ok(PolicyRule {
        id: row.try_get("id")?,
        peripheral: PeripheralSelector::from_columns(&pk, &pv).ok_or(StoreError::Corrupt(T))?,
        gateway: GatewaySelector::from_columns(&gk, &gv).ok_or(StoreError::Corrupt(T))?,
        scope: Scope(to_u32(row.try_get("scope")?, T)?),
        lifetimes: Lifetimes {
            session_s: to_u32(row.try_get("session_s")?, T)?,
            resumption_s: to_u32(row.try_get("resumption_s")?, T)?,
        },
        created_ms: row.try_get("created_ms")?,
    })
}

impl Store {
    /// Adds a policy rule.
    pub async fn add_policy(
        &self,
        peripheral: &PeripheralSelector,
        gateway: &GatewaySelector,
        scope: Scope,
        lifetimes: Lifetimes,
        actor: &str,
    ) -> Result<PolicyRule, StoreError> {
        let mut tx = self.begin_write().await?;
        let (pk, pv) = peripheral.to_columns();
        let (gk, gv) = gateway.to_columns();
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO policies (peripheral_kind, peripheral_value, gateway_kind, gateway_value, \
             scope, session_s, resumption_s, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (peripheral_kind, peripheral_value, gateway_kind, gateway_value) DO NOTHING \
             RETURNING id",
        )
        .bind(pk)
        .bind(pv)
        .bind(gk)
        .bind(gv)
        .bind(i64::from(scope.0))
        .bind(i64::from(lifetimes.session_s))
        .bind(i64::from(lifetimes.resumption_s))
        .bind(now)
        .fetch_optional(&mut *tx.tx)
        .await?
        .ok_or(StoreError::Conflict(Conflict::Policy))?;
        let id: i64 = row.try_get("id")?;
        tx.audit(
            NewAudit::new("policy_add", "ok", actor).detail(&format!(
                "rule {id}: {peripheral} -> {gateway} scope={} session_s={} resumption_s={}",
                scope.0, lifetimes.session_s, lifetimes.resumption_s
            )),
            now,
        )
        .await?;
        // No feed event: a grant is the union of the matching rules
        // (`model::grant`), so a new rule never takes anything away, and
        // gateways close every session on `policy_changed` (SPEC.md §10.5).
        tx.commit().await?;
        Ok(PolicyRule {
            id,
            peripheral: peripheral.clone(),
            gateway: gateway.clone(),
            scope,
            lifetimes,
            created_ms: now,
        })
    }

    /// Removes a policy rule.
    pub async fn remove_policy(&self, id: i64, actor: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM policies WHERE id = $1")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        let now = now_ms();
        tx.audit(
            NewAudit::new("policy_remove", "ok", actor).detail(&format!("rule {id}")),
            now,
        )
        .await?;
        // A removed rule may take a grant away: gateways close the sessions
        // and drop the tickets it may have allowed (SPEC.md §10.5).
        tx.event("policy_changed", &id.to_string(), now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// All policy rules, by id.
    pub async fn list_policies(&self) -> Result<Vec<PolicyRule>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, peripheral_kind, peripheral_value, gateway_kind, gateway_value, scope, \
             session_s, resumption_s, created_ms FROM policies ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(policy_from_row).collect()
    }

    /// The longest lifetime, `max(session_s, resumption_s)`, any policy rule
    /// grants, seconds (0 without rules).
    pub async fn longest_policy_lifetime_s(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT MAX(session_s) AS s, MAX(resumption_s) AS r FROM policies")
            .fetch_one(&self.pool)
            .await?;
        let s = row.try_get::<Option<i64>, _>("s")?.unwrap_or(0);
        let r = row.try_get::<Option<i64>, _>("r")?.unwrap_or(0);
        Ok(s.max(r))
    }
}
