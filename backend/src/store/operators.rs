//! Operators and their API tokens ([`crate::access`]).

use sqlx::Row;

use super::{now_ms, NewAudit, Store, StoreError};
use crate::access::{
    Caller, OperatorRecord, Role, TokenHash, TokenRecord, FIRST_ADMIN, INIT_TOKEN_ID,
};

const T_OPS: &str = "operators";
const T_TOKENS: &str = "operator_tokens";

fn operator_from_row(row: &sqlx::any::AnyRow) -> Result<OperatorRecord, StoreError> {
    let role: String = row.try_get("role")?;
    Ok(OperatorRecord {
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or(StoreError::Corrupt(T_OPS))?,
        created_ms: row.try_get("created_ms")?,
        removed_ms: row.try_get("removed_ms")?,
    })
}

fn token_from_row(row: &sqlx::any::AnyRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: row.try_get("id")?,
        operator: row.try_get("operator")?,
        created_ms: row.try_get("created_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
    })
}

impl Store {
    /// The first start: with no operator ever added, makes the data
    /// directory's admin token (`init`'s) the token of an admin named
    /// [`FIRST_ADMIN`]. Does nothing once any operator exists or existed, so
    /// a removed admin or a revoked init token never comes back. Returns
    /// whether it added the admin.
    pub async fn bootstrap_operators(&self, init_token: &TokenHash) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let any = sqlx::query("SELECT name FROM operators LIMIT 1")
            .fetch_optional(&mut *tx.tx)
            .await?;
        if any.is_some() {
            return Ok(false);
        }
        let now = now_ms();
        sqlx::query("INSERT INTO operators (name, role, created_ms) VALUES ($1, $2, $3)")
            .bind(FIRST_ADMIN)
            .bind(Role::Admin.as_str())
            .bind(now)
            .execute(&mut *tx.tx)
            .await?;
        insert_token(&mut tx, INIT_TOKEN_ID, FIRST_ADMIN, init_token, now).await?;
        tx.audit(
            NewAudit::new("operator_add", "ok", "init")
                .detail(&format!("{FIRST_ADMIN} role=admin token={INIT_TOKEN_ID}")),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Adds an operator with its first token. Fails with
    /// [`StoreError::OperatorExists`] if the name is or was in use.
    pub async fn add_operator(
        &self,
        name: &str,
        role: Role,
        token_id: &str,
        token: &TokenHash,
        actor: &str,
    ) -> Result<OperatorRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO operators (name, role, created_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.to_owned())
        .bind(role.as_str())
        .bind(now)
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::OperatorExists);
        }
        insert_token(&mut tx, token_id, name, token, now).await?;
        tx.audit(
            NewAudit::new("operator_add", "ok", actor)
                .detail(&format!("{name} role={role} token={token_id}")),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(OperatorRecord {
            name: name.to_owned(),
            role,
            created_ms: now,
            removed_ms: None,
        })
    }

    /// Removes an operator: every token of it stops working. The name stays
    /// taken. Refuses when no other admin would keep a live token
    /// ([`StoreError::LastAdmin`]).
    pub async fn remove_operator(&self, name: &str, actor: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT role FROM operators WHERE name = $1 AND removed_ms IS NULL")
            .bind(name.to_owned())
            .fetch_optional(&mut *tx.tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let role: String = row.try_get("role")?;
        if Role::parse(&role) == Some(Role::Admin)
            && admins_left(&mut tx, Some(name), None).await? == 0
        {
            return Err(StoreError::LastAdmin);
        }
        let now = now_ms();
        sqlx::query("UPDATE operators SET removed_ms = $1 WHERE name = $2")
            .bind(now)
            .bind(name.to_owned())
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query(
            "UPDATE operator_tokens SET revoked_ms = $1 WHERE operator = $2 AND revoked_ms IS NULL",
        )
        .bind(now)
        .bind(name.to_owned())
        .execute(&mut *tx.tx)
        .await?;
        tx.audit(
            NewAudit::new("operator_remove", "ok", actor).detail(name),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every operator, removed ones too, by name.
    pub async fn list_operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT name, role, created_ms, removed_ms FROM operators ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(operator_from_row).collect()
    }

    /// Adds a token for a present operator.
    pub async fn add_token(
        &self,
        operator: &str,
        token_id: &str,
        token: &TokenHash,
        actor: &str,
    ) -> Result<TokenRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("SELECT name FROM operators WHERE name = $1 AND removed_ms IS NULL")
            .bind(operator.to_owned())
            .fetch_optional(&mut *tx.tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let now = now_ms();
        insert_token(&mut tx, token_id, operator, token, now).await?;
        tx.audit(
            NewAudit::new("token_add", "ok", actor).detail(&format!("{token_id} of {operator}")),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(TokenRecord {
            id: token_id.to_owned(),
            operator: operator.to_owned(),
            created_ms: now,
            revoked_ms: None,
        })
    }

    /// Revokes a token; with `replacement`, adds that one for the same
    /// operator in the same transaction (a rotation). Returns the revoked
    /// token's operator. Fails with [`StoreError::NotFound`] for an unknown
    /// or already revoked token, and with [`StoreError::LastAdmin`] when it
    /// is revoked without a replacement and no admin would keep a live one.
    pub async fn revoke_token(
        &self,
        token_id: &str,
        replacement: Option<(&str, &TokenHash)>,
        actor: &str,
    ) -> Result<String, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT operator FROM operator_tokens WHERE id = $1 AND revoked_ms IS NULL",
        )
        .bind(token_id.to_owned())
        .fetch_optional(&mut *tx.tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let operator: String = row.try_get("operator")?;
        // Revoking the last admin's last token (not replacing it) would
        // leave nobody to manage operators.
        if replacement.is_none() && admins_left(&mut tx, None, Some(token_id)).await? == 0 {
            return Err(StoreError::LastAdmin);
        }
        let now = now_ms();
        sqlx::query("UPDATE operator_tokens SET revoked_ms = $1 WHERE id = $2")
            .bind(now)
            .bind(token_id.to_owned())
            .execute(&mut *tx.tx)
            .await?;
        let (action, detail) = match replacement {
            Some((new_id, hash)) => {
                insert_token(&mut tx, new_id, &operator, hash, now).await?;
                (
                    "token_rotate",
                    format!("{token_id} of {operator} replaced by {new_id}"),
                )
            }
            None => ("token_revoke", format!("{token_id} of {operator}")),
        };
        tx.audit(NewAudit::new(action, "ok", actor).detail(&detail), now)
            .await?;
        tx.commit().await?;
        Ok(operator)
    }

    /// Tokens, revoked ones too, of one operator or of all, by operator and
    /// creation.
    pub async fn list_tokens(
        &self,
        operator: Option<&str>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let (clause, _) = super::where_asked(&[(operator.is_some(), "operator =")]);
        let sql = format!(
            "SELECT id, operator, created_ms, revoked_ms FROM operator_tokens{clause} \
             ORDER BY operator, created_ms, id"
        );
        let mut q = sqlx::query(&sql);
        if let Some(o) = operator {
            q = q.bind(o.to_owned());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(token_from_row).collect()
    }

    /// The caller a presented token authenticates, if it is a live token of
    /// a present operator. The token is looked up by its id and its hash
    /// compared in constant time.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Caller>, StoreError> {
        let Some(id) = crate::access::token_id(presented) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT t.hash, o.name, o.role FROM operator_tokens t \
             JOIN operators o ON o.name = t.operator \
             WHERE t.id = $1 AND t.revoked_ms IS NULL AND o.removed_ms IS NULL",
        )
        .bind(id.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let hash: String = row.try_get("hash")?;
        let hash = TokenHash::from_hex(&hash).ok_or(StoreError::Corrupt(T_TOKENS))?;
        if !hash.matches(presented) {
            return Ok(None);
        }
        let role: String = row.try_get("role")?;
        Ok(Some(Caller {
            name: row.try_get("name")?,
            role: Role::parse(&role).ok_or(StoreError::Corrupt(T_OPS))?,
            token_id: id.to_owned(),
        }))
    }
}

/// How many present admins other than `but_operator` keep a live token
/// other than `but_token`: the admins who could still manage operators if
/// that operator or token went.
async fn admins_left(
    tx: &mut super::WriteTx<'_>,
    but_operator: Option<&str>,
    but_token: Option<&str>,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(DISTINCT o.name) AS n FROM operators o \
         JOIN operator_tokens t ON t.operator = o.name \
         WHERE o.role = 'admin' AND o.removed_ms IS NULL AND t.revoked_ms IS NULL \
         AND o.name <> $1 AND t.id <> $2",
    )
    .bind(but_operator.unwrap_or("").to_owned())
    .bind(but_token.unwrap_or("").to_owned())
    .fetch_one(&mut *tx.tx)
    .await?;
    Ok(row.try_get("n")?)
}

async fn insert_token(
    tx: &mut super::WriteTx<'_>,
    id: &str,
    operator: &str,
    hash: &TokenHash,
    now: i64,
) -> Result<(), StoreError> {
    let n = sqlx::query(
        "INSERT INTO operator_tokens (id, operator, hash, created_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id.to_owned())
    .bind(operator.to_owned())
    .bind(hash.to_hex())
    .bind(now)
    .execute(&mut *tx.tx)
    .await?
    .rows_affected();
    // A 48-bit random id repeats once in ~16 million tokens' lifetimes; the
    // caller asks for another.
    if n == 0 {
        return Err(StoreError::TokenIdTaken);
    }
    Ok(())
}
