//! The cross-check of each table: which events back a row, and which of
//! their fields must agree with it (docs/AUDIT.md "Cross-checks").

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Checker, Ev, Key};

const FORWARD_OPEN: &str = "forward.open";
const FORWARD_CLOSE: &str = "forward.close";
const FORWARD_DENIED: &str = "forward.denied";
const CONNECTION_OPEN: &str = "connection.open";
const AUTH_SUCCESS: &str = "auth.success";
const CONNECTION_CLOSE: &str = "connection.close";
const GRANT_CREATE: &str = "grant.create";
const GRANT_REVOKE: &str = "grant.revoke";

/// A `forwards` row.
struct Forward {
    id: String,
    connection_id: String,
    user: String,
    auth_method: String,
    source: String,
    target: Option<String>,
    host: String,
    port: i64,
    address: Option<String>,
    result: String,
    reason: Option<String>,
    started_at: i64,
    ended_at: Option<i64>,
    bytes_to: i64,
    bytes_from: i64,
    close_reason: Option<String>,
    mode: String,
}

impl Forward {
    fn read(r: &AnyRow) -> Result<Forward, sqlx::Error> {
        Ok(Forward {
            id: r.try_get::<i64, _>("id")?.to_string(),
            connection_id: r.try_get("connection_id")?,
            user: r.try_get("user_name")?,
            auth_method: r.try_get("auth_method")?,
            source: r.try_get("source")?,
            target: r.try_get("target")?,
            host: r.try_get("host")?,
            port: r.try_get("port")?,
            address: r.try_get("address")?,
            result: r.try_get("result")?,
            reason: r.try_get("reason")?,
            started_at: r.try_get("started_at")?,
            ended_at: r.try_get("ended_at")?,
            bytes_to: r.try_get("bytes_to_target")?,
            bytes_from: r.try_get("bytes_from_target")?,
            close_reason: r.try_get("close_reason")?,
            mode: r.try_get("mode")?,
        })
    }

    /// Refused by `Audit::forward_refused` (backed by `forward.denied`),
    /// rather than allowed (`forward.open`, then `forward.close`).
    fn refused(&self) -> bool {
        self.result != "allowed" && self.close_reason.is_none()
    }
}

/// A detail's byte count as the row stores it (saturated to i64).
fn bytes(ev: &Ev, key: &str) -> Option<String> {
    let n = ev
        .detail
        .get(key)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    Some(i64::try_from(n).unwrap_or(i64::MAX).to_string())
}

impl Checker<'_> {
    pub(super) async fn forwards(&mut self) -> Result<(), sqlx::Error> {
        let mut after = i64::MIN;
        loop {
            let page = self
                .page(
                    "SELECT id, connection_id, user_name, auth_method, source, target, host, port, address, \
                     result, reason, started_at, ended_at, bytes_to_target, bytes_from_target, close_reason, mode \
                     FROM forwards WHERE node = $1 AND started_at >= $2 AND id > $3 ORDER BY id LIMIT $4",
                    after,
                )
                .await?;
            let rows = page
                .iter()
                .map(Forward::read)
                .collect::<Result<Vec<_>, _>>()?;
            let ats = rows
                .iter()
                .flat_map(|f| [Some(f.started_at), f.ended_at])
                .flatten()
                .collect();
            let kinds = [FORWARD_OPEN, FORWARD_CLOSE, FORWARD_DENIED];
            let mut found = self
                .events_at(Key::Forward, Some(self.node()), &kinds, ats)
                .await?;
            for f in &rows {
                if self.full("forwards") {
                    return Ok(());
                }
                if f.refused() {
                    self.forward_refused(f, &mut found).await?;
                } else {
                    self.forward_allowed(f, &mut found).await?;
                }
            }
            match page.last() {
                Some(last) if !Self::last_page(&page) => after = last.try_get("id")?,
                _ => return Ok(()),
            }
        }
    }

    /// What every event of a forward says about its request.
    fn forward_request(&mut self, f: &Forward, ev: &Ev) {
        let k = Key::Forward;
        self.compare_each(
            k,
            &f.id,
            ev,
            [
                (
                    "connection_id",
                    Some(f.connection_id.clone()),
                    ev.connection_id(),
                ),
                ("user_name", Some(f.user.clone()), ev.user()),
                ("source", Some(f.source.clone()), ev.source()),
                ("target", f.target.clone(), ev.text("target")),
                ("host", Some(f.host.clone()), ev.text("host")),
                ("port", Some(f.port.to_string()), ev.text("port")),
                (
                    "auth_method",
                    Some(f.auth_method.clone()),
                    ev.text("auth_method"),
                ),
                (
                    "mode",
                    Some(f.mode.clone()),
                    Some(ev.text("mode").unwrap_or_else(|| "forward".into())),
                ),
            ],
        );
    }

    async fn forward_refused(
        &mut self,
        f: &Forward,
        found: &mut super::Found,
    ) -> Result<(), sqlx::Error> {
        let k = Key::Forward;
        let Some(ev) = self
            .backing(found, FORWARD_DENIED, &f.id, self.since())
            .await?
        else {
            self.unbacked(k, &f.id, FORWARD_DENIED, f.started_at, "a refused forward");
            return Ok(());
        };
        self.forward_request(f, &ev);
        self.compare_time(k, &f.id, &ev, "started_at", Some(f.started_at));
        self.compare_time(k, &f.id, &ev, "ended_at", f.ended_at);
        self.compare_each(
            k,
            &f.id,
            &ev,
            [
                ("result", Some(f.result.clone()), ev.text("result")),
                ("reason", f.reason.clone(), ev.reason()),
                ("address", f.address.clone(), None),
                (
                    "bytes_to_target",
                    Some(f.bytes_to.to_string()),
                    Some("0".into()),
                ),
                (
                    "bytes_from_target",
                    Some(f.bytes_from.to_string()),
                    Some("0".into()),
                ),
            ],
        );
        Ok(())
    }

    async fn forward_allowed(
        &mut self,
        f: &Forward,
        found: &mut super::Found,
    ) -> Result<(), sqlx::Error> {
        let k = Key::Forward;
        let Some(open) = self
            .backing(found, FORWARD_OPEN, &f.id, self.since())
            .await?
        else {
            self.unbacked(k, &f.id, FORWARD_OPEN, f.started_at, "an allowed forward");
            return Ok(());
        };
        self.forward_request(f, &open);
        self.compare_time(k, &f.id, &open, "started_at", Some(f.started_at));
        let Some(ended) = f.ended_at else {
            self.compare_each(
                k,
                &f.id,
                &open,
                [
                    ("result", Some(f.result.clone()), Some("allowed".into())),
                    ("reason", f.reason.clone(), None),
                ],
            );
            self.forward_address(f, &open, None);
            // Open in the row: no close may be in the chain.
            if let Some(close) = self
                .backing(found, FORWARD_CLOSE, &f.id, f.started_at)
                .await?
                && self.settled(close.at())
            {
                self.compare_time(k, &f.id, &close, "ended_at", None);
            }
            return Ok(());
        };
        let Some(close) = self
            .backing(found, FORWARD_CLOSE, &f.id, self.since())
            .await?
        else {
            self.unbacked(k, &f.id, FORWARD_CLOSE, ended, "a forward that ended");
            return Ok(());
        };
        self.compare_time(k, &f.id, &close, "ended_at", Some(ended));
        self.compare(
            k,
            &f.id,
            &close,
            "close_reason",
            f.close_reason.clone(),
            close.reason(),
        );
        let failed = close.text("result");
        let reason = failed.as_ref().and_then(|_| close.reason());
        let result = failed.unwrap_or_else(|| "allowed".into());
        self.compare_each(
            k,
            &f.id,
            &close,
            [
                ("result", Some(f.result.clone()), Some(result)),
                ("reason", f.reason.clone(), reason),
                (
                    "bytes_to_target",
                    Some(f.bytes_to.to_string()),
                    bytes(&close, "bytes_to_target"),
                ),
                (
                    "bytes_from_target",
                    Some(f.bytes_from.to_string()),
                    bytes(&close, "bytes_from_target"),
                ),
            ],
        );
        self.forward_address(f, &open, Some(&close));
        Ok(())
    }

    /// The address dialled: the one the close event names, or else the
    /// planned one (`forward.open`), or one of its addresses when a name
    /// had several and the forward is still being dialled or carried.
    fn forward_address(&mut self, f: &Forward, open: &Ev, close: Option<&Ev>) {
        let k = Key::Forward;
        if let Some(close) = close.filter(|c| c.detail.contains_key("address")) {
            self.compare(
                k,
                &f.id,
                close,
                "address",
                f.address.clone(),
                close.text("address"),
            );
            return;
        }
        let planned = open.text("address");
        let one_of = |a: &String| {
            planned
                .as_deref()
                .is_some_and(|p| p.split(',').any(|x| x == a))
        };
        if close.is_some() || !f.address.as_ref().is_some_and(one_of) {
            self.compare(k, &f.id, open, "address", f.address.clone(), planned);
        }
    }

    pub(super) async fn connections(&mut self) -> Result<(), sqlx::Error> {
        let mut after = String::new();
        loop {
            let page = self
                .page(
                    "SELECT id, source, client_version, user_name, auth_method, opened_at, authenticated_at, \
                     closed_at, close_reason FROM connections \
                     WHERE node = $1 AND opened_at >= $2 AND id > $3 ORDER BY id LIMIT $4",
                    after.clone(),
                )
                .await?;
            let ats = page
                .iter()
                .map(|r| {
                    let t = |c: &str| r.try_get::<Option<i64>, _>(c);
                    Ok([t("opened_at")?, t("authenticated_at")?, t("closed_at")?])
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
                .into_iter()
                .flatten()
                .flatten()
                .collect();
            let kinds = [CONNECTION_OPEN, AUTH_SUCCESS, CONNECTION_CLOSE];
            let mut found = self
                .events_at(Key::Connection, Some(self.node()), &kinds, ats)
                .await?;
            for r in &page {
                if self.full("connections") {
                    return Ok(());
                }
                self.connection(r, &mut found).await?;
                after = r.try_get("id")?;
            }
            if Self::last_page(&page) {
                return Ok(());
            }
        }
    }

    async fn connection(
        &mut self,
        r: &AnyRow,
        found: &mut super::Found,
    ) -> Result<(), sqlx::Error> {
        let k = Key::Connection;
        let id: String = r.try_get("id")?;
        let opened: i64 = r.try_get("opened_at")?;
        let user: Option<String> = r.try_get("user_name")?;
        let method: Option<String> = r.try_get("auth_method")?;
        let authenticated: Option<i64> = r.try_get("authenticated_at")?;
        let closed: Option<i64> = r.try_get("closed_at")?;
        let Some(open) = self
            .backing(found, CONNECTION_OPEN, &id, self.since())
            .await?
        else {
            self.unbacked(k, &id, CONNECTION_OPEN, opened, "a connection");
            return Ok(());
        };
        self.compare_time(k, &id, &open, "opened_at", Some(opened));
        self.compare(k, &id, &open, "source", r.try_get("source")?, open.source());
        if user.is_some() || method.is_some() || authenticated.is_some() {
            match self.backing(found, AUTH_SUCCESS, &id, self.since()).await? {
                Some(ev) => {
                    self.compare_time(k, &id, &ev, "authenticated_at", authenticated);
                    self.compare_each(
                        k,
                        &id,
                        &ev,
                        [
                            ("user_name", user.clone(), ev.user()),
                            ("auth_method", method, ev.text("method")),
                        ],
                    );
                }
                None => {
                    let at = authenticated.unwrap_or(opened);
                    self.unbacked(k, &id, AUTH_SUCCESS, at, "a connection with a login");
                }
            }
        }
        if let Some(closed) = closed {
            let Some(ev) = self
                .backing(found, CONNECTION_CLOSE, &id, self.since())
                .await?
            else {
                self.unbacked(k, &id, CONNECTION_CLOSE, closed, "a closed connection");
                return Ok(());
            };
            self.compare_time(k, &id, &ev, "closed_at", Some(closed));
            self.compare_each(
                k,
                &id,
                &ev,
                [
                    ("close_reason", r.try_get("close_reason")?, ev.reason()),
                    (
                        "client_version",
                        r.try_get("client_version")?,
                        ev.text("client_version"),
                    ),
                ],
            );
        }
        Ok(())
    }

    pub(super) async fn grants(&mut self) -> Result<(), sqlx::Error> {
        let mut after = i64::MIN;
        loop {
            let page = self
                .page(
                    "SELECT id, user_name, key_fingerprint, method, source, created_at, expires_at, revoked_at, \
                     revoked_reason FROM grants WHERE node = $1 AND created_at >= $2 AND id > $3 ORDER BY id LIMIT $4",
                    after,
                )
                .await?;
            let mut created = Vec::with_capacity(page.len());
            let mut revoked = Vec::new();
            for r in &page {
                created.push(r.try_get::<i64, _>("created_at")?);
                revoked.extend(r.try_get::<Option<i64>, _>("revoked_at")?);
            }
            let mut found = self
                .events_at(Key::Grant, Some(self.node()), &[GRANT_CREATE], created)
                .await?;
            // A grant is revoked by its user on any node, or by the CLI of
            // any node (`NODE (cli)`): any node's chain backs that.
            let mut revokes = self
                .events_at(Key::Grant, None, &[GRANT_REVOKE], revoked)
                .await?;
            for r in &page {
                if self.full("grants") {
                    return Ok(());
                }
                self.grant(r, &mut found, &mut revokes).await?;
                after = r.try_get("id")?;
            }
            if Self::last_page(&page) {
                return Ok(());
            }
        }
    }

    async fn grant(
        &mut self,
        r: &AnyRow,
        found: &mut super::Found,
        revokes: &mut super::Found,
    ) -> Result<(), sqlx::Error> {
        let k = Key::Grant;
        let id = r.try_get::<i64, _>("id")?.to_string();
        let created: i64 = r.try_get("created_at")?;
        let expires: i64 = r.try_get("expires_at")?;
        let revoked: Option<i64> = r.try_get("revoked_at")?;
        let user: String = r.try_get("user_name")?;
        let Some(ev) = self.backing(found, GRANT_CREATE, &id, self.since()).await? else {
            self.unbacked(k, &id, GRANT_CREATE, created, "a grant");
            return Ok(());
        };
        self.compare_time(k, &id, &ev, "created_at", Some(created));
        self.compare_each(
            k,
            &id,
            &ev,
            [
                ("user_name", Some(user.clone()), ev.user()),
                (
                    "key_fingerprint",
                    r.try_get("key_fingerprint")?,
                    ev.text("key_fingerprint"),
                ),
                ("method", r.try_get("method")?, ev.text("method")),
            ],
        );
        let expiry = ev
            .text("expires_at")
            .and_then(|t| humantime::parse_rfc3339(&t).ok())
            .map(crate::clock::micros);
        if expiry != Some(expires) {
            let shown = expiry.map(super::time).or_else(|| ev.text("expires_at"));
            self.compare(k, &id, &ev, "expires_at", Some(super::time(expires)), shown);
        }
        if ev.source().is_some() {
            self.compare(k, &id, &ev, "source", r.try_get("source")?, ev.source());
        }
        match revoked {
            Some(at) => match self
                .backing(revokes, GRANT_REVOKE, &id, self.since())
                .await?
            {
                Some(rev) => {
                    self.compare_time(k, &id, &rev, "revoked_at", Some(at));
                    self.compare_each(
                        k,
                        &id,
                        &rev,
                        [
                            ("revoked_reason", r.try_get("revoked_reason")?, rev.reason()),
                            ("user_name", Some(user), rev.user()),
                        ],
                    );
                }
                None => self.unbacked(k, &id, GRANT_REVOKE, at, "a revoked grant"),
            },
            // Valid in the row: no revocation may be in any chain.
            None => {
                if let Some(rev) = self.backing(revokes, GRANT_REVOKE, &id, created).await?
                    && self.settled(rev.at())
                {
                    self.compare_time(k, &id, &rev, "revoked_at", None);
                }
            }
        }
        Ok(())
    }
}
