//! `[auth]`, `[oidc]` and `[[users]]`.

use std::collections::HashMap;

use russh::keys::ssh_key::{Algorithm, Fingerprint, HashAlg, PublicKey};
use toml::Spanned;

use super::{Ctx, valid_name};
use crate::config::schema::*;
use crate::config::*;
use crate::revocation::RevocationList;

/// Users that can never log in, whatever `deny_users` says.
const ALWAYS_DENIED: &[&str] = &["root"];

pub(super) fn auth(cx: &mut Ctx<'_>, raw: &RawAuth) -> AuthConfig {
    let trusted_cas = trusted_cas(cx, raw);
    let revoked = match &raw.revoked_keys {
        None => RevocationList::empty(),
        Some(p) => match RevocationList::load(&cx.path(p.get_ref())) {
            Ok(r) => r,
            Err(e) => {
                cx.err(
                    &p.span(),
                    format!("auth.revoked_keys: {}: {e}", p.get_ref()),
                );
                RevocationList::empty()
            }
        },
    };
    let deny_users = deny_users(cx, raw);
    AuthConfig {
        trusted_cas,
        revoked,
        deny_users,
        max_auth_tries: cx.int("auth.max_auth_tries", &raw.max_auth_tries, 6, 1..101) as usize,
        allow_no_touch_required: raw.allow_no_touch_required.unwrap_or(false),
    }
}

pub(super) fn oidc(cx: &mut Ctx<'_>, raw: &RawOidc) -> OidcConfig {
    let issuer = raw.issuer.get_ref().clone();
    if !issuer.starts_with("https://") {
        if super::is_secure_url(&issuer) {
            cx.warn(
                &raw.issuer.span(),
                "oidc.issuer: plain http is only acceptable for a local test identity provider",
            );
        } else {
            cx.err(
                &raw.issuer.span(),
                format!("oidc.issuer: {issuer:?} must be an https:// URL"),
            );
        }
    }
    let client_secret = raw
        .client_secret_file
        .as_ref()
        .and_then(|f| cx.read("oidc.client_secret_file", f))
        .map(|s| s.trim().to_string());
    let scopes: Vec<String> = match &raw.scopes {
        Some(s) => s.iter().map(|s| s.get_ref().clone()).collect(),
        None => ["openid", "profile", "email", "groups"]
            .map(String::from)
            .to_vec(),
    };
    if !scopes.iter().any(|s| s == "openid") {
        cx.err(
            &raw.client_id.span(),
            "oidc.scopes: must include \"openid\"",
        );
    }
    OidcConfig {
        issuer,
        client_id: raw.client_id.get_ref().clone(),
        client_secret,
        scopes,
        username_claim: raw
            .username_claim
            .as_ref()
            .map_or("preferred_username".into(), |c| c.get_ref().clone()),
        groups_claim: raw
            .groups_claim
            .as_ref()
            .map_or("groups".into(), |c| c.get_ref().clone()),
    }
}

/// `auth.trusted_user_ca_keys`: files of CA public keys (no DSA).
fn trusted_cas(cx: &mut Ctx<'_>, raw: &RawAuth) -> Vec<Fingerprint> {
    let mut trusted_cas = Vec::new();
    for file in raw.trusted_user_ca_keys.iter().flatten() {
        let Some(text) = cx.read("auth.trusted_user_ca_keys", file) else {
            continue;
        };
        let mut keys = 0;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::from_openssh(line);
            keys += usize::from(key.is_ok());
            match key {
                Ok(k) if k.algorithm() == Algorithm::Dsa => cx.err(
                    &file.span(),
                    format!(
                        "auth.trusted_user_ca_keys: {} line {}: a DSA (ssh-dss) key cannot be a CA: \
                         DSA signs with SHA-1, and OpenSSH refuses it too",
                        file.get_ref(),
                        n + 1
                    ),
                ),
                Ok(k) => trusted_cas.push(k.fingerprint(HashAlg::Sha256)),
                Err(e) => cx.err(
                    &file.span(),
                    format!(
                        "auth.trusted_user_ca_keys: {} line {}: not an OpenSSH public key ({e})",
                        file.get_ref(),
                        n + 1
                    ),
                ),
            }
        }
        if keys == 0 {
            cx.err(
                &file.span(),
                format!(
                    "auth.trusted_user_ca_keys: {} holds no public key",
                    file.get_ref()
                ),
            );
        }
    }
    trusted_cas
}

/// `auth.deny_users`, always with root.
fn deny_users(cx: &mut Ctx<'_>, raw: &RawAuth) -> Vec<String> {
    let mut deny_users: Vec<String> = match &raw.deny_users {
        None => ALWAYS_DENIED.iter().map(|s| s.to_string()).collect(),
        Some(list) => list.iter().map(|u| u.get_ref().clone()).collect(),
    };
    for always in ALWAYS_DENIED {
        if !deny_users.iter().any(|u| u.eq_ignore_ascii_case(always)) {
            if let Some(first) = raw.deny_users.as_ref().and_then(|l| l.first()) {
                cx.warn(
                    &first.span(),
                    format!("auth.deny_users: {always} is always denied, even when not listed"),
                );
            }
            deny_users.push(always.to_string());
        }
    }
    deny_users
}

pub(super) fn users(cx: &mut Ctx<'_>, raw: &[Spanned<RawUser>]) -> HashMap<String, UserEntry> {
    let mut users = HashMap::new();
    for u in raw {
        let u = u.get_ref();
        let name = u.name.get_ref();
        if !valid_name(name) {
            cx.err(
                &u.name.span(),
                format!("users.name: {name:?} is not a valid user name"),
            );
        }
        let mut keys = Vec::new();
        for k in &u.keys {
            match PublicKey::from_openssh(k.get_ref().trim()) {
                Ok(key) => keys.push(key.key_data().clone()),
                Err(e) => cx.err(
                    &k.span(),
                    format!("users.keys: not an OpenSSH public key line ({e})"),
                ),
            }
        }
        let mfa = cx.one_of(
            "users.mfa",
            &u.mfa,
            UserMfa::Totp,
            &[("totp", UserMfa::Totp), ("none", UserMfa::None)],
        );
        if mfa == UserMfa::None {
            cx.warn(&u.name.span(), format!("user {name}: mfa = \"none\": its key alone logs in; use only for service accounts"));
        }
        for g in &u.groups {
            if !valid_name(g.get_ref()) {
                cx.err(
                    &g.span(),
                    format!("users.groups: {:?} is not a valid group name", g.get_ref()),
                );
            }
        }
        let entry = UserEntry {
            name: name.clone(),
            groups: u.groups.iter().map(|g| g.get_ref().clone()).collect(),
            keys,
            mfa,
        };
        if users.insert(name.clone(), entry).is_some() {
            cx.err(
                &u.name.span(),
                format!("users.name: user {name} is defined twice"),
            );
        }
    }
    users
}
