//! Logins at the identity provider with the OAuth 2.0 Device Authorization
//! Grant (RFC 8628): discovery, the device request, polling (honouring
//! `interval` and `slow_down`), and a strict check of the ID token.
//!
//! Network calls happen in tasks the caller spawns (see `interactive`); this
//! module never runs on the SSH session loop for longer than a bounded wait.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::CoreAuthenticationFlow;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod,
    CoreDeviceAuthorizationResponse, CoreGrantType, CoreIdToken, CoreIdTokenVerifier,
    CoreJsonWebKey, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, DeviceAuthorizationUrl, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, ProviderMetadata, RedirectUrl, RequestTokenError, Scope,
    SignatureVerificationError, reqwest,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::RwLock;
use tokio::time::Instant;

use crate::config::OidcConfig;
use crate::config::is_secure_url;

/// Any single HTTP exchange with the IdP.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Metadata and keys are refreshed at least this often.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// An unknown `kid` refetches the keys, but not more often than this.
const MIN_REFETCH: Duration = Duration::from_secs(10);
/// ID tokens issued more than this far in the future are refused (clock skew).
const IAT_SKEW: Duration = Duration::from_secs(300);
/// ID tokens issued longer ago than this are refused.
const IAT_MAX_AGE: Duration = Duration::from_secs(3600);

/// Why an IdP login failed. Names are audit reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// The IdP did not answer (or answered garbage) in time.
    #[error("idp_unreachable: {0}")]
    Unreachable(String),
    /// The IdP does not offer the device flow.
    #[error("idp_misconfigured: {0}")]
    Misconfigured(String),
    /// The user declined at the IdP.
    #[error("idp_access_denied")]
    Denied,
    /// The user code expired before it was approved.
    #[error("idp_code_expired")]
    Expired,
    /// The IdP refused the request (e.g. `invalid_client`).
    #[error("idp_error: {0}")]
    Refused(String),
    /// The ID token failed verification.
    #[error("idp_token_invalid: {0}")]
    TokenInvalid(String),
}

impl OidcError {
    pub fn reason(&self) -> &'static str {
        match self {
            OidcError::Unreachable(_) => "idp_unreachable",
            OidcError::Misconfigured(_) => "idp_misconfigured",
            OidcError::Denied => "idp_access_denied",
            OidcError::Expired => "idp_code_expired",
            OidcError::Refused(_) => "idp_error",
            OidcError::TokenInvalid(_) => "idp_token_invalid",
        }
    }

    /// What the user is told (nothing internal).
    pub fn message(&self) -> &'static str {
        match self {
            OidcError::Unreachable(_) | OidcError::Misconfigured(_) | OidcError::Refused(_) => {
                "the identity provider cannot be reached right now"
            }
            OidcError::Denied => "the login was declined at the identity provider",
            OidcError::Expired => "the code expired before it was approved",
            OidcError::TokenInvalid(_) => "the identity provider's answer did not check out",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
struct DeviceEndpoint {
    device_authorization_endpoint: DeviceAuthorizationUrl,
}
impl AdditionalProviderMetadata for DeviceEndpoint {}

type Metadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

#[derive(Debug)]
struct Discovered {
    metadata: Metadata,
    at: Instant,
}

/// The identity provider of `[oidc]`: discovery cache and HTTP client.
#[derive(Debug)]
pub struct Idp {
    cfg: OidcConfig,
    http: reqwest::Client,
    discovered: RwLock<Option<Arc<Discovered>>>,
}

/// A started device authorization: what the user must see.
#[derive(Debug, Clone)]
pub struct DeviceFlow {
    details: CoreDeviceAuthorizationResponse,
    /// The URL to open: `verification_uri_complete` when the IdP gives one.
    pub url: String,
    pub user_code: String,
    pub expires_in: Duration,
}

/// A started browser login (authorization code flow with PKCE): where to
/// send the browser, and the secrets the callback is checked against. The
/// caller keeps these server-side; only `url` leaves.
#[derive(Debug, Clone)]
pub struct CodeFlow {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// A verified IdP login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpLogin {
    /// The `username_claim`; must equal the SSH user name.
    pub username: String,
    pub groups: Vec<String>,
    /// Authentication methods (`amr`) the IdP reports.
    pub amr: Vec<String>,
    pub subject: String,
}

impl IdpLogin {
    /// The IdP says it did more than one factor itself: `amr` holds `mfa`,
    /// or methods (RFC 8176) of at least two different kinds, something
    /// known (pwd, pin, kba), something held (otp, hwk, swk, sms, tel, sc)
    /// and something one is (fpt, face, iris, retina, vbm). One method
    /// alone (`otp` for an emailed code, `swk` for a device key) is one
    /// factor, however strong.
    pub fn has_mfa(&self) -> bool {
        if self.amr.iter().any(|m| m == "mfa") {
            return true;
        }
        let kind = |m: &str| match m {
            "pwd" | "pin" | "kba" => Some(0),
            "otp" | "hwk" | "swk" | "sms" | "tel" | "sc" => Some(1),
            "fpt" | "face" | "iris" | "retina" | "vbm" => Some(2),
            _ => None,
        };
        let kinds: std::collections::BTreeSet<u8> =
            self.amr.iter().filter_map(|m| kind(m)).collect();
        kinds.len() >= 2
    }
}

impl Idp {
    pub fn new(cfg: OidcConfig) -> Result<Self, OidcError> {
        let http = reqwest::Client::builder()
            // Following redirects would open SSRF paths.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| OidcError::Misconfigured(e.to_string()))?;
        Ok(Idp {
            cfg,
            http,
            discovered: RwLock::new(None),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.cfg
    }

    /// Provider metadata and keys, from the cache unless stale (or `fresh`).
    async fn discover(&self, fresh: bool) -> Result<Arc<Discovered>, OidcError> {
        if let Some(d) = self.discovered.read().await.as_ref() {
            let age = d.at.elapsed();
            if age < METADATA_TTL && !(fresh && age >= MIN_REFETCH) {
                return Ok(d.clone());
            }
        }
        let issuer = IssuerUrl::new(self.cfg.issuer.clone())
            .map_err(|e| OidcError::Misconfigured(e.to_string()))?;
        let metadata = Metadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Unreachable(chain(&e)))?;
        // Keys and tokens over plain http could be swapped on the way.
        require_https("jwks_uri", metadata.jwks_uri().url().as_str())?;
        if let Some(token) = metadata.token_endpoint() {
            require_https("token_endpoint", token.url().as_str())?;
        }
        require_https(
            "device_authorization_endpoint",
            metadata
                .additional_metadata()
                .device_authorization_endpoint
                .url()
                .as_str(),
        )?;
        let d = Arc::new(Discovered {
            metadata,
            at: Instant::now(),
        });
        *self.discovered.write().await = Some(d.clone());
        Ok(d)
    }

    /// Discovery done and fresh enough (for `/readyz`).
    pub async fn ready(&self) -> bool {
        self.check().await.is_ok()
    }

    /// Discover (or use what was discovered), saying what is wrong.
    pub async fn check(&self) -> Result<(), OidcError> {
        self.discover(false).await.map(drop)
    }

    fn client_id(&self) -> ClientId {
        ClientId::new(self.cfg.client_id.clone())
    }

    fn secret(&self) -> Option<ClientSecret> {
        self.cfg.client_secret.clone().map(ClientSecret::new)
    }

    /// Ask the IdP for a device code and user code.
    pub async fn start(&self) -> Result<DeviceFlow, OidcError> {
        let d = self.discover(false).await?;
        let endpoint = d
            .metadata
            .additional_metadata()
            .device_authorization_endpoint
            .clone();
        let client =
            CoreClient::from_provider_metadata(d.metadata.clone(), self.client_id(), self.secret())
                .set_device_authorization_url(endpoint);
        let scopes = self
            .cfg
            .scopes
            .iter()
            .filter(|s| *s != "openid")
            .cloned()
            .map(Scope::new);
        let details: CoreDeviceAuthorizationResponse = client
            .exchange_device_code()
            .add_scopes(scopes)
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let url = details
            .verification_uri_complete()
            .map(|u| u.secret().to_string())
            .unwrap_or_else(|| details.verification_uri().to_string());
        Ok(DeviceFlow {
            user_code: details.user_code().secret().to_string(),
            expires_in: details.expires_in(),
            url,
            details,
        })
    }

    /// Poll the token endpoint until the user approves, declines, or the
    /// code expires; then verify the ID token.
    pub async fn wait(&self, flow: &DeviceFlow) -> Result<IdpLogin, OidcError> {
        let d = self.discover(false).await?;
        let endpoint = d
            .metadata
            .additional_metadata()
            .device_authorization_endpoint
            .clone();
        let client =
            CoreClient::from_provider_metadata(d.metadata.clone(), self.client_id(), self.secret())
                .set_device_authorization_url(endpoint);
        let token = client
            .exchange_device_access_token(&flow.details)
            .map_err(|e| OidcError::Misconfigured(e.to_string()))?
            .request_async(&self.http, tokio::time::sleep, Some(flow.expires_in))
            .await
            .map_err(token_error)?;
        let _ = token.access_token();
        let raw = token
            .extra_fields()
            .id_token()
            .ok_or_else(|| OidcError::TokenInvalid("no ID token in the token response".into()))?
            .to_string();
        self.verify(&raw).await
    }

    /// Start a browser login (the review console): the authorization URL
    /// with a fresh `state`, `nonce` and PKCE (S256) challenge, each from
    /// the OS random generator, returning to `redirect`.
    pub async fn start_code(&self, redirect: &str) -> Result<CodeFlow, OidcError> {
        let d = self.discover(false).await?;
        require_https(
            "authorization_endpoint",
            d.metadata.authorization_endpoint().url().as_str(),
        )?;
        let redirect = RedirectUrl::new(redirect.to_string())
            .map_err(|e| OidcError::Misconfigured(e.to_string()))?;
        let client =
            CoreClient::from_provider_metadata(d.metadata.clone(), self.client_id(), self.secret())
                .set_redirect_uri(redirect);
        let state = random_token().map_err(OidcError::Misconfigured)?;
        let nonce = random_token().map_err(OidcError::Misconfigured)?;
        let verifier = PkceCodeVerifier::new(random_token().map_err(OidcError::Misconfigured)?);
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&verifier);
        let (s, n) = (state.clone(), nonce.clone());
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(s),
                move || Nonce::new(n),
            )
            .set_pkce_challenge(challenge);
        for scope in self.cfg.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, _, _) = request.url();
        Ok(CodeFlow {
            url: url.to_string(),
            state,
            nonce,
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Finish a browser login: exchange `code` (with the PKCE verifier) and
    /// verify the ID token as strictly as for SSH logins, plus its `nonce`.
    /// The caller has checked `state`.
    pub async fn finish_code(
        &self,
        redirect: &str,
        code: &str,
        flow: &CodeFlow,
    ) -> Result<IdpLogin, OidcError> {
        let d = self.discover(false).await?;
        let redirect = RedirectUrl::new(redirect.to_string())
            .map_err(|e| OidcError::Misconfigured(e.to_string()))?;
        let client =
            CoreClient::from_provider_metadata(d.metadata.clone(), self.client_id(), self.secret())
                .set_redirect_uri(redirect);
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Misconfigured(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(flow.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let raw = token
            .extra_fields()
            .id_token()
            .ok_or_else(|| OidcError::TokenInvalid("no ID token in the token response".into()))?
            .to_string();
        self.verify_nonce(&raw, Some(&flow.nonce)).await
    }

    /// Verify an ID token against the issuer's keys, refetching them once if
    /// the token names a key we do not have (key rotation).
    pub async fn verify(&self, raw: &str) -> Result<IdpLogin, OidcError> {
        self.verify_nonce(raw, None).await
    }

    /// [`Idp::verify`], and with `nonce` the token must carry exactly it.
    async fn verify_nonce(&self, raw: &str, nonce: Option<&str>) -> Result<IdpLogin, OidcError> {
        let d = self.discover(false).await?;
        let first = self.verify_with(raw, d.metadata.jwks(), nonce);
        match first {
            Err(TokenError::UnknownKey) => {
                let d = self.discover(true).await?;
                self.verify_with(raw, d.metadata.jwks(), nonce)
            }
            other => other,
        }
        .map_err(|e| OidcError::TokenInvalid(e.to_string()))
    }

    fn verify_with(
        &self,
        raw: &str,
        jwks: &CoreJsonWebKeySet,
        nonce: Option<&str>,
    ) -> Result<IdpLogin, TokenError> {
        let claims = verify_id_token_nonce(
            raw,
            jwks,
            &self.cfg.issuer,
            &self.cfg.client_id,
            chrono::Utc::now(),
            nonce,
        )?;
        login_from_claims(&claims, &self.cfg.username_claim, &self.cfg.groups_claim)
    }
}

/// Why an ID token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("signed with a key the issuer does not publish")]
    UnknownKey,
    #[error("{0}")]
    Rejected(String),
    #[error("claim {0} is missing or not a string")]
    MissingClaim(String),
}

/// Check signature (allowed algorithms only: RS256, ES256, EdDSA; never
/// `none`, never HMAC), issuer, audience, expiry and issue time. Returns the
/// token's claims as JSON.
pub fn verify_id_token(
    raw: &str,
    jwks: &CoreJsonWebKeySet,
    issuer: &str,
    client_id: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Value, TokenError> {
    verify_id_token_nonce(raw, jwks, issuer, client_id, now, None)
}

/// [`verify_id_token`]; with `nonce` (the code flow) the token's `nonce`
/// claim must be present and equal it (compared in constant time). The
/// device flow has no nonce and passes `None`.
pub fn verify_id_token_nonce(
    raw: &str,
    jwks: &CoreJsonWebKeySet,
    issuer: &str,
    client_id: &str,
    now: chrono::DateTime<chrono::Utc>,
    nonce: Option<&str>,
) -> Result<Value, TokenError> {
    let token: CoreIdToken = raw
        .parse()
        .map_err(|e: serde_json::Error| TokenError::Malformed(e.to_string()))?;
    let issuer =
        IssuerUrl::new(issuer.to_string()).map_err(|e| TokenError::Rejected(e.to_string()))?;
    let skew = chrono::Duration::from_std(IAT_SKEW).unwrap_or_default();
    let max_age = chrono::Duration::from_std(IAT_MAX_AGE).unwrap_or_default();
    let verifier = CoreIdTokenVerifier::new_public_client(
        ClientId::new(client_id.to_string()),
        issuer,
        jwks.clone(),
    )
    .set_allowed_algs([
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        CoreJwsSigningAlgorithm::EdDsa,
    ])
    .set_time_fn(move || now)
    .set_issue_time_verifier_fn(move |iat| {
        if iat > now + skew {
            Err(format!("issued in the future ({iat})"))
        } else if iat < now - max_age {
            Err(format!("issued too long ago ({iat})"))
        } else {
            Ok(())
        }
    });
    let nonce_check = |got: Option<&Nonce>| match (nonce, got) {
        // The device flow has no nonce.
        (None, _) => Ok(()),
        (Some(want), Some(got)) if crate::text::same_secret(want, got.secret()) => Ok(()),
        (Some(_), Some(_)) => Err("nonce does not match the login's".to_string()),
        (Some(_), None) => Err("nonce missing".to_string()),
    };
    token.claims(&verifier, nonce_check).map_err(|e| match e {
        ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey,
        ) => TokenError::UnknownKey,
        other => TokenError::Rejected(chain(&other)),
    })?;
    // The signature covers exactly these bytes: read the claims we need
    // (including custom ones like `groups`) from them.
    let payload = raw
        .split('.')
        .nth(1)
        .ok_or_else(|| TokenError::Malformed("no payload".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| TokenError::Malformed(e.to_string()))?;
    let claims: Value =
        serde_json::from_slice(&bytes).map_err(|e| TokenError::Malformed(e.to_string()))?;
    // Checks openidconnect leaves to the caller.
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf
            .as_i64()
            .ok_or_else(|| TokenError::Malformed("nbf is not a number".into()))?;
        if nbf > now.timestamp() + IAT_SKEW.as_secs() as i64 {
            return Err(TokenError::Rejected(format!("not valid before {nbf}")));
        }
    }
    if let Some(azp) = claims.get("azp")
        && azp.as_str() != Some(client_id)
    {
        return Err(TokenError::Rejected(format!(
            "issued to another party ({azp})"
        )));
    }
    if claims
        .get("sub")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(TokenError::MissingClaim("sub".into()));
    }
    Ok(claims)
}

/// The user name, groups and `amr` of verified claims.
pub fn login_from_claims(
    claims: &Value,
    username_claim: &str,
    groups_claim: &str,
) -> Result<IdpLogin, TokenError> {
    let string = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
    let list = |name: &str| match claims.get(name) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    // Anyone can type an address into a profile; it names a user only once
    // the IdP has verified it.
    if username_claim == "email" && claims.get("email_verified") != Some(&Value::Bool(true)) {
        return Err(TokenError::Rejected(
            "username_claim is email, but email_verified is not true".into(),
        ));
    }
    Ok(IdpLogin {
        username: string(username_claim)
            .ok_or_else(|| TokenError::MissingClaim(username_claim.into()))?,
        groups: list(groups_claim),
        amr: list("amr"),
        subject: string("sub").ok_or_else(|| TokenError::MissingClaim("sub".into()))?,
    })
}

fn token_error<RE, T>(e: RequestTokenError<RE, T>) -> OidcError
where
    RE: std::error::Error + 'static,
    T: openidconnect::ErrorResponse + 'static,
{
    match e {
        RequestTokenError::ServerResponse(r) => {
            let text = serde_json::to_value(&r)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| "error".into());
            match text.as_str() {
                "access_denied" => OidcError::Denied,
                "expired_token" => OidcError::Expired,
                _ => OidcError::Refused(text),
            }
        }
        RequestTokenError::Request(e) => OidcError::Unreachable(chain(&e)),
        RequestTokenError::Parse(e, _) => OidcError::Unreachable(format!("unreadable answer: {e}")),
        RequestTokenError::Other(s) if s.contains("expired") => OidcError::Expired,
        RequestTokenError::Other(s) => OidcError::Refused(s),
    }
}

/// Refuse an endpoint the IdP announced that is not https (loopback
/// excepted, as for the issuer).
pub fn require_https(what: &str, url: &str) -> Result<(), OidcError> {
    if is_secure_url(url) {
        Ok(())
    } else {
        Err(OidcError::Misconfigured(format!(
            "the identity provider announced {what} {url:?}; it must be an https:// URL"
        )))
    }
}

/// 256 random bits from the OS, URL-safe base64 (43 characters).
pub fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests;
