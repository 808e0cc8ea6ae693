//! The admin API's operator management ([`crate::access`]): who am I, the
//! operators and their tokens. Reading who one is needs any role; the rest
//! is the admin's.
//!
//! | method, path | role | does |
//! |---|---|---|
//! | `GET /v1/admin/whoami` | viewer | the caller: name, role, token id |
//! | `GET /v1/admin/operators` | admin | every operator, removed ones too |
//! | `POST /v1/admin/operators` | admin | add one ([`NewOperator`]); answers its first token, once |
//! | `DELETE /v1/admin/operators/{name}` | admin | remove (its tokens stop working) |
//! | `GET /v1/admin/tokens?operator=` | admin | tokens (never a secret or hash) |
//! | `POST /v1/admin/tokens` | admin | another token for an operator ([`NewTokenFor`]) |
//! | `DELETE /v1/admin/tokens/{id}` | admin | revoke |
//! | `POST /v1/admin/tokens/{id}/rotate` | admin | a new token for the same operator, the old one revoked |

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use vouch_proto::wire::backend::route;

use super::admin::{CanManage, CanRead};
use super::{Json, Query};
use crate::access::{Caller, NewToken, OperatorRecord, Role, TokenRecord};
use crate::error::AppError;
use crate::registry;
use crate::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(route::admin::WHOAMI, get(whoami))
        .route(
            route::admin::OPERATORS,
            get(list_operators).post(add_operator),
        )
        .route(route::admin::OPERATOR, delete(remove_operator))
        .route(route::admin::TOKENS, get(list_tokens).post(add_token))
        .route(route::admin::TOKEN, delete(revoke_token))
        .route(route::admin::TOKEN_ROTATE, post(rotate_token))
}

/// The body of `POST /v1/admin/operators`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    /// 1-64 of letters, digits, `.`, `_`, `-`, `@`.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
}

/// The body of `POST /v1/admin/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenFor {
    /// The operator the token is for.
    pub operator: String,
}

/// A token just made: the only answer that ever holds its secret.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IssuedToken {
    /// The token as listed.
    #[serde(flatten)]
    pub record: TokenRecord,
    /// The token itself: give it to the operator; it is not shown again.
    pub token: String,
}

fn issued(record: TokenRecord, t: NewToken) -> IssuedToken {
    IssuedToken {
        record,
        token: t.token.to_string(),
    }
}

/// The answer to `POST /v1/admin/operators`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AddedOperator {
    /// The operator.
    pub operator: OperatorRecord,
    /// Its first token.
    pub token: IssuedToken,
}

/// The answer to `GET /v1/admin/whoami`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WhoAmI {
    /// The operator's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The id of the token presented.
    pub token_id: String,
}

impl From<Caller> for WhoAmI {
    fn from(c: Caller) -> Self {
        Self {
            name: c.name,
            role: c.role,
            token_id: c.token_id,
        }
    }
}

async fn whoami(who: CanRead) -> Json<WhoAmI> {
    Json(who.caller.into())
}

async fn list_operators(
    _: CanManage,
    State(state): State<AppState>,
) -> Result<Json<Vec<OperatorRecord>>, AppError> {
    Ok(Json(state.store.list_operators().await?))
}

async fn add_operator(
    who: CanManage,
    State(state): State<AppState>,
    Json(body): Json<NewOperator>,
) -> Result<Response, AppError> {
    let (operator, t) =
        registry::add_operator(&state.store, &body.name, &body.role, &who.actor()).await?;
    let record = TokenRecord {
        id: t.id.clone(),
        operator: operator.name.clone(),
        created_ms: operator.created_ms,
        revoked_ms: None,
    };
    let answer = AddedOperator {
        operator,
        token: issued(record, t),
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

async fn remove_operator(
    who: CanManage,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, AppError> {
    registry::remove_operator(&state.store, &name, &who.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokensQuery {
    operator: Option<String>,
}

async fn list_tokens(
    _: CanManage,
    State(state): State<AppState>,
    Query(q): Query<TokensQuery>,
) -> Result<Json<Vec<TokenRecord>>, AppError> {
    Ok(Json(state.store.list_tokens(q.operator.as_deref()).await?))
}

async fn add_token(
    who: CanManage,
    State(state): State<AppState>,
    Json(body): Json<NewTokenFor>,
) -> Result<Response, AppError> {
    let (record, t) = registry::add_token(&state.store, &body.operator, &who.actor()).await?;
    Ok((StatusCode::CREATED, Json(issued(record, t))).into_response())
}

async fn revoke_token(
    who: CanManage,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    registry::revoke_token(&state.store, &id, &who.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate_token(
    who: CanManage,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let (record, t) = registry::rotate_token(&state.store, &id, &who.actor()).await?;
    Ok((StatusCode::CREATED, Json(issued(record, t))).into_response())
}
