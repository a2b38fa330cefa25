//! Unit tests of the ID token check: tokens are crafted here with
//! `jsonwebtoken` (and, where a library would refuse to build them, by hand
//! with `aws_lc_rs`), keys are generated per test run, and `now` is fixed.

use super::*;

use std::sync::LazyLock;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256,
    RsaKeyPair,
};
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeZone, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const ISSUER: &str = "https://idp.example.com";
const CLIENT: &str = "portvakt";

/// The fixed "current time" of every test.
fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 0).unwrap()
}

fn ts(offset_secs: i64) -> i64 {
    now().timestamp() + offset_secs
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------- keys

struct EcKey {
    pkcs8: Vec<u8>,
    pair: EcdsaKeyPair,
    kid: &'static str,
}

impl EcKey {
    fn new(kid: &'static str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        EcKey {
            pkcs8: pkcs8.as_ref().to_vec(),
            pair,
            kid,
        }
    }

    /// The uncompressed public point, 0x04 || x || y.
    fn point(&self) -> &[u8] {
        let point = self.pair.public_key().as_ref();
        assert_eq!(point.len(), 65);
        assert_eq!(point[0], 4);
        point
    }

    fn x(&self) -> &[u8] {
        &self.point()[1..33]
    }

    fn jwk(&self) -> Value {
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": b64(self.x()),
            "y": b64(&self.point()[33..65]),
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
        })
    }

    fn encoding(&self) -> EncodingKey {
        EncodingKey::from_ec_der(&self.pkcs8)
    }

    /// A proper ES256 token with this key's `kid`.
    fn token(&self, claims: &Value) -> String {
        jwt(Algorithm::ES256, Some(self.kid), claims, &self.encoding())
    }

    /// Sign `header.payload` as given (for tokens no library would build).
    fn sign_raw(&self, header: &Value, payload_b64: &str) -> String {
        let input = format!("{}.{payload_b64}", b64(header.to_string()));
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

struct RsaKey {
    pair: RsaKeyPair,
    kid: &'static str,
}

impl RsaKey {
    fn new(kid: &'static str) -> Self {
        RsaKey {
            pair: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
            kid,
        }
    }

    fn jwk_without_alg(&self) -> Value {
        let public = self.pair.public_key();
        json!({
            "kty": "RSA",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
            "kid": self.kid,
            "use": "sig",
        })
    }

    fn jwk(&self) -> Value {
        let mut jwk = self.jwk_without_alg();
        jwk["alg"] = json!("RS256");
        jwk
    }

    fn encoding(&self) -> EncodingKey {
        let der = self.pair.as_der().unwrap();
        let body = STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
    }

    fn token(&self, claims: &Value) -> String {
        jwt(Algorithm::RS256, Some(self.kid), claims, &self.encoding())
    }

    fn sign_raw(&self, header: &Value, payload_b64: &str) -> String {
        let input = format!("{}.{payload_b64}", b64(header.to_string()));
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
        format!("{input}.{}", b64(sig))
    }
}

struct EdKey {
    pkcs8: Vec<u8>,
    pair: Ed25519KeyPair,
    kid: &'static str,
}

impl EdKey {
    fn new(kid: &'static str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        EdKey {
            pkcs8: pkcs8.as_ref().to_vec(),
            pair,
            kid,
        }
    }

    fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64(self.pair.public_key().as_ref()),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    fn token(&self, claims: &Value) -> String {
        jwt(
            Algorithm::EdDSA,
            Some(self.kid),
            claims,
            &EncodingKey::from_ed_der(&self.pkcs8),
        )
    }
}

/// The issuer's keys.
static EC: LazyLock<EcKey> = LazyLock::new(|| EcKey::new("ec-1"));
static RSA: LazyLock<RsaKey> = LazyLock::new(|| RsaKey::new("rsa-1"));
static ED: LazyLock<EdKey> = LazyLock::new(|| EdKey::new("ed-1"));
/// An attacker's key that claims the issuer's EC `kid`.
static EC_IMPOSTOR: LazyLock<EcKey> = LazyLock::new(|| EcKey::new("ec-1"));

fn jwks(keys: &[Value]) -> CoreJsonWebKeySet {
    serde_json::from_value(json!({ "keys": keys })).expect("a valid JWKS")
}

/// The issuer's published key set: one key of each allowed type.
fn issuer_jwks() -> CoreJsonWebKeySet {
    jwks(&[EC.jwk(), RSA.jwk(), ED.jwk()])
}

fn jwt(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("token encodes")
}

/// Claims that pass every check at `now()`.
fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "248289761001",
        "iat": ts(-30),
        "exp": ts(270),
        "preferred_username": "alice",
        "email": "alice@example.com",
        "email_verified": true,
        "groups": ["ops", "db-admins"],
        "amr": ["pwd", "otp"],
    })
}

fn claims_with(changes: Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn verify(raw: &str) -> Result<Value, TokenError> {
    verify_id_token(raw, &issuer_jwks(), ISSUER, CLIENT, now())
}

#[track_caller]
fn assert_rejected(result: Result<Value, TokenError>, why: &str) {
    match result {
        Err(TokenError::Rejected(_)) => {}
        other => panic!("{why}: expected Rejected, got {other:?}"),
    }
}

/// Rejected, and the reason names `what` (so the test fails for the right cause).
#[track_caller]
fn assert_rejected_for(result: Result<Value, TokenError>, what: &str, why: &str) {
    match result {
        Err(TokenError::Rejected(text)) if text.to_lowercase().contains(what) => {}
        other => panic!("{why}: expected Rejected(..{what}..), got {other:?}"),
    }
}

#[track_caller]
fn assert_malformed_or_rejected(result: Result<Value, TokenError>, why: &str) {
    match result {
        Err(TokenError::Malformed(_) | TokenError::Rejected(_)) => {}
        other => panic!("{why}: expected Malformed or Rejected, got {other:?}"),
    }
}

#[track_caller]
fn assert_refused(result: Result<Value, TokenError>, why: &str) {
    assert!(result.is_err(), "{why}: accepted: {result:?}");
}

// ------------------------------------------------------- accepted tokens

#[test]
fn good_es256_token_is_accepted() {
    let verified = verify(&EC.token(&claims())).expect("a good ES256 token");
    assert_eq!(verified, claims());

    let login = login_from_claims(&verified, "preferred_username", "groups").unwrap();
    assert_eq!(
        login,
        IdpLogin {
            username: "alice".into(),
            groups: vec!["ops".into(), "db-admins".into()],
            amr: vec!["pwd".into(), "otp".into()],
            subject: "248289761001".into(),
        }
    );
    assert!(login.has_mfa());
}

#[test]
fn good_rs256_token_is_accepted() {
    let verified = verify(&RSA.token(&claims())).expect("a good RS256 token");
    assert_eq!(verified, claims());
}

#[test]
fn good_eddsa_token_is_accepted() {
    let verified = verify(&ED.token(&claims())).expect("a good EdDSA token");
    assert_eq!(verified, claims());
}

#[test]
fn audience_array_with_only_our_client_is_accepted() {
    let c = claims_with(json!({ "aud": [CLIENT] }));
    assert_eq!(verify(&EC.token(&c)).unwrap(), c);
}

#[test]
fn token_without_kid_is_checked_against_the_single_key_of_its_type() {
    // Allowed by OIDC Core §10.1 when one key fits; the signature still counts.
    let c = claims();
    let good = jwt(Algorithm::ES256, None, &c, &EC.encoding());
    assert_eq!(verify(&good).unwrap(), c);
    let forged = jwt(Algorithm::ES256, None, &c, &EC_IMPOSTOR.encoding());
    assert_rejected(verify(&forged), "no kid, foreign key");
}

#[test]
fn token_without_kid_and_two_candidate_keys_is_refused() {
    let other = EcKey::new("ec-2");
    let set = jwks(&[EC.jwk(), other.jwk()]);
    let token = jwt(Algorithm::ES256, None, &claims(), &EC.encoding());
    assert_rejected(
        verify_id_token(&token, &set, ISSUER, CLIENT, now()),
        "ambiguous key",
    );
}

#[test]
fn custom_claims_are_read_from_the_signed_payload() {
    let c = claims_with(json!({ "roles": "admins", "email": "a.lice@example.com" }));
    let verified = verify(&EC.token(&c)).unwrap();
    let login = login_from_claims(&verified, "email", "roles").unwrap();
    assert_eq!(login.username, "a.lice@example.com");
    assert_eq!(login.groups, vec!["admins".to_string()]);
}

// ------------------------------------------------------- bad signatures

#[test]
fn bad_signature_from_another_key_with_the_same_kid_is_refused() {
    assert_rejected(
        verify(&EC_IMPOSTOR.token(&claims())),
        "signed by an impostor key",
    );
}

#[test]
fn bad_signature_payload_altered_after_signing_is_refused() {
    let good = EC.token(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let altered = claims_with(json!({ "preferred_username": "root", "groups": ["admins"] }));
    let forged = format!("{}.{}.{}", parts[0], b64(altered.to_string()), parts[2]);
    assert_rejected(verify(&forged), "payload altered");

    // The same with RSA.
    let good = RSA.token(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64(altered.to_string()), parts[2]);
    assert_rejected(verify(&forged), "payload altered (RS256)");
}

#[test]
fn bad_signature_header_altered_after_signing_is_refused() {
    let good = EC.token(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let header = json!({ "alg": "ES256", "kid": EC.kid, "typ": "JWT", "x": 1 });
    let forged = format!("{}.{}.{}", b64(header.to_string()), parts[1], parts[2]);
    assert_rejected(verify(&forged), "header altered");
}

#[test]
fn bad_signature_empty_or_truncated_is_refused() {
    let good = EC.token(&claims());
    let (signed, sig) = good.rsplit_once('.').unwrap();
    assert_refused(verify(&format!("{signed}.")), "empty signature");
    assert_refused(
        verify(&format!("{signed}.{}", &sig[..sig.len() / 2])),
        "truncated signature",
    );
    assert_refused(
        verify(&format!("{signed}.{}", b64([0u8; 64]))),
        "all-zero signature",
    );
}

// ------------------------------------------------------- unknown key

#[test]
fn unknown_kid_is_unknown_key() {
    // The refetch of the issuer's keys (key rotation) relies on this variant.
    let rotated = EcKey::new("ec-2");
    assert_eq!(
        verify(&rotated.token(&claims())),
        Err(TokenError::UnknownKey)
    );
}

#[test]
fn empty_key_set_is_unknown_key() {
    assert_eq!(
        verify_id_token(&EC.token(&claims()), &jwks(&[]), ISSUER, CLIENT, now()),
        Err(TokenError::UnknownKey)
    );
}

#[test]
fn key_published_for_encryption_only_is_not_used() {
    let mut jwk = EC.jwk();
    jwk["use"] = json!("enc");
    let result = verify_id_token(&EC.token(&claims()), &jwks(&[jwk]), ISSUER, CLIENT, now());
    assert_refused(result, "key with use=enc");
}

// ------------------------------------------------------- issuer

#[test]
fn wrong_issuer_is_refused() {
    let c = claims_with(json!({ "iss": "https://evil.example.com" }));
    assert_rejected_for(verify(&EC.token(&c)), "issuer", "other issuer");
}

#[test]
fn wrong_issuer_with_trailing_slash_is_refused() {
    // OIDC Core §3.1.3.7: the issuer must match exactly.
    let c = claims_with(json!({ "iss": format!("{ISSUER}/") }));
    assert_rejected_for(
        verify(&EC.token(&c)),
        "issuer",
        "token issuer with trailing slash",
    );

    let token = EC.token(&claims());
    assert_rejected_for(
        verify_id_token(&token, &issuer_jwks(), &format!("{ISSUER}/"), CLIENT, now()),
        "issuer",
        "configured issuer with trailing slash",
    );
}

#[test]
fn wrong_issuer_localhost_vs_loopback_address_is_refused() {
    let c = claims_with(json!({ "iss": "http://localhost:9090" }));
    let token = EC.token(&c);
    assert_rejected_for(
        verify_id_token(
            &token,
            &issuer_jwks(),
            "http://127.0.0.1:9090",
            CLIENT,
            now(),
        ),
        "issuer",
        "localhost vs 127.0.0.1",
    );
    assert!(
        verify_id_token(
            &token,
            &issuer_jwks(),
            "http://localhost:9090",
            CLIENT,
            now()
        )
        .is_ok()
    );
}

#[test]
fn wrong_issuer_case_or_port_is_refused() {
    for iss in [
        "https://IDP.example.com",
        "https://idp.example.com:443",
        "https://idp.example.com/realms/x",
        "http://idp.example.com",
    ] {
        let c = claims_with(json!({ "iss": iss }));
        assert_rejected_for(verify(&EC.token(&c)), "issuer", iss);
    }
}

#[test]
fn missing_issuer_is_refused() {
    let c = claims_with(json!({ "iss": null }));
    assert_malformed_or_rejected(verify(&EC.token(&c)), "no iss");
}

// ------------------------------------------------------- audience

#[test]
fn wrong_audience_is_refused() {
    let c = claims_with(json!({ "aud": "another-client" }));
    assert_rejected_for(verify(&EC.token(&c)), "audience", "other audience");
    let c = claims_with(json!({ "aud": ["another-client", "third"] }));
    assert_rejected_for(verify(&EC.token(&c)), "audience", "other audiences");
    let c = claims_with(json!({ "aud": format!("{CLIENT} ") }));
    assert_rejected_for(verify(&EC.token(&c)), "audience", "near miss");
}

#[test]
fn wrong_audience_ours_plus_an_untrusted_one_is_refused() {
    // OIDC Core §3.1.3.7 item 3: refuse additional audiences not trusted by
    // the client. openidconnect trusts no other audience by default.
    let c = claims_with(json!({ "aud": [CLIENT, "another-client"] }));
    assert_rejected_for(
        verify(&EC.token(&c)),
        "audience",
        "extra untrusted audience",
    );
}

#[test]
fn missing_audience_is_refused() {
    let c = claims_with(json!({ "aud": null }));
    assert_rejected_for(verify(&EC.token(&c)), "audience", "no aud");
}

// ------------------------------------------------------- times

#[test]
fn expired_token_is_refused() {
    let c = claims_with(json!({ "exp": ts(-1) }));
    assert_rejected_for(verify(&EC.token(&c)), "expired", "expired a second ago");
    let c = claims_with(json!({ "exp": ts(0) }));
    assert_rejected_for(verify(&EC.token(&c)), "expired", "expires right now");
    let c = claims_with(json!({ "exp": ts(1) }));
    assert!(verify(&EC.token(&c)).is_ok(), "one second left");
}

#[test]
fn missing_expiry_is_refused() {
    let c = claims_with(json!({ "exp": null }));
    assert_malformed_or_rejected(verify(&EC.token(&c)), "no exp");
}

#[test]
fn issued_in_the_future_is_refused() {
    let c = claims_with(json!({ "iat": ts(301), "exp": ts(900) }));
    assert_rejected_for(
        verify(&EC.token(&c)),
        "issued in the future",
        "iat beyond the skew",
    );
    let c = claims_with(json!({ "iat": ts(300), "exp": ts(900) }));
    assert!(verify(&EC.token(&c)).is_ok(), "iat at the skew limit");
}

#[test]
fn issued_too_long_ago_is_refused() {
    let c = claims_with(json!({ "iat": ts(-3601) }));
    assert_rejected_for(
        verify(&EC.token(&c)),
        "issued too long ago",
        "iat older than an hour",
    );
    let c = claims_with(json!({ "iat": ts(-3600) }));
    assert!(verify(&EC.token(&c)).is_ok(), "iat exactly an hour ago");
}

#[test]
fn missing_issued_at_is_refused() {
    let c = claims_with(json!({ "iat": null }));
    assert_malformed_or_rejected(verify(&EC.token(&c)), "no iat");
}

// ------------------------------------------------------- algorithms

#[test]
fn alg_none_is_refused() {
    let payload = b64(claims().to_string());
    for header in [
        json!({ "alg": "none" }),
        json!({ "alg": "none", "typ": "JWT" }),
        json!({ "alg": "none", "kid": EC.kid }),
        json!({ "alg": "None" }),
        json!({ "alg": "NONE" }),
        json!({ "alg": "nOnE", "kid": EC.kid }),
    ] {
        let raw = format!("{}.{payload}.", b64(header.to_string()));
        assert_refused(verify(&raw), &header.to_string());
        // A "none" token carrying a real signature is no better.
        let sig = EC.token(&claims()).rsplit('.').next().unwrap().to_string();
        assert_refused(verify(&format!("{raw}{sig}")), &header.to_string());
    }
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    // Algorithm confusion: the "secret" is something the attacker can read.
    let x_b64 = b64(EC.x());
    let jwk_text = EC.jwk().to_string();
    let rsa_jwk = RSA.jwk();
    let secrets: Vec<&[u8]> = vec![
        EC.x(),
        x_b64.as_bytes(),
        EC.point(),
        jwk_text.as_bytes(),
        rsa_jwk["n"].as_str().unwrap().as_bytes(),
    ];
    for secret in secrets {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            for kid in [Some(EC.kid), Some(RSA.kid), None] {
                let key = EncodingKey::from_secret(secret).unwrap();
                let token = jwt(alg, kid, &claims(), &key);
                assert_rejected(verify(&token), &format!("{alg:?} kid {kid:?}"));
            }
        }
    }
}

#[test]
fn hs256_is_refused_even_with_a_symmetric_key_in_the_key_set() {
    let secret = b"shared-secret-published-in-jwks";
    let oct = json!({ "kty": "oct", "k": b64(secret), "kid": "hmac", "alg": "HS256" });
    let set = jwks(&[EC.jwk(), oct]);
    let key = EncodingKey::from_secret(secret).unwrap();
    let token = jwt(Algorithm::HS256, Some("hmac"), &claims(), &key);
    assert_rejected(
        verify_id_token(&token, &set, ISSUER, CLIENT, now()),
        "HS256 against an oct JWK",
    );
}

#[test]
fn rs256_header_on_an_ec_key_is_refused() {
    // The header says RS256 and names the issuer's EC key.
    let header = json!({ "alg": "RS256", "kid": EC.kid, "typ": "JWT" });
    let payload = b64(claims().to_string());
    // Signed with an RSA key the issuer does not publish...
    let attacker = RsaKey::new("x");
    let token = attacker.sign_raw(&header, &payload);
    assert_refused(verify(&token), "RS256 header, EC kid, foreign RSA key");
    // ...and with the EC key's own ES256 signature under an RS256 header.
    let es = EC.sign_raw(&json!({ "alg": "ES256", "kid": EC.kid }), &payload);
    let sig = es.rsplit('.').next().unwrap();
    let token = format!("{}.{payload}.{sig}", b64(header.to_string()));
    assert_refused(verify(&token), "RS256 header, ES256 signature");
}

#[test]
fn es256_header_on_an_rsa_key_is_refused() {
    let header = json!({ "alg": "ES256", "kid": RSA.kid, "typ": "JWT" });
    let payload = b64(claims().to_string());
    assert_refused(
        verify(&EC_IMPOSTOR.sign_raw(&header, &payload)),
        "ES256 header, RSA kid",
    );
    assert_refused(
        verify(&EC.sign_raw(&header, &payload)),
        "ES256 header, RSA kid, issuer's EC signature",
    );
}

#[test]
fn rsa_algorithms_outside_the_allowed_list_are_refused() {
    // The JWK names no algorithm, so only the verifier's list can refuse them.
    let set = jwks(&[RSA.jwk_without_alg()]);
    for alg in [
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS512,
    ] {
        let token = jwt(alg, Some(RSA.kid), &claims(), &RSA.encoding());
        assert_rejected(
            verify_id_token(&token, &set, ISSUER, CLIENT, now()),
            &format!("{alg:?}"),
        );
    }
    // RS256 with the same JWK is fine.
    let token = RSA.token(&claims());
    assert!(verify_id_token(&token, &set, ISSUER, CLIENT, now()).is_ok());
}

#[test]
fn access_token_type_is_refused() {
    // An RFC 9068 access token is not an ID token, even if the claims fit.
    let header = json!({ "alg": "ES256", "kid": EC.kid, "typ": "at+jwt" });
    let token = EC.sign_raw(&header, &b64(claims().to_string()));
    assert_rejected_for(verify(&token), "at+jwt", "typ at+jwt");
}

#[test]
fn critical_header_is_refused() {
    let header = json!({ "alg": "ES256", "kid": EC.kid, "crit": ["exp"], "exp": 1 });
    let token = EC.sign_raw(&header, &b64(claims().to_string()));
    assert_rejected_for(verify(&token), "critical", "crit header");
}

#[test]
fn embedded_jwk_in_header_is_not_trusted() {
    // An attacker's key in the header (CVE-2018-0114 style) must be ignored.
    let header = json!({
        "alg": "ES256",
        "kid": "attacker",
        "jwk": EC_IMPOSTOR.jwk(),
    });
    let token = EC_IMPOSTOR.sign_raw(&header, &b64(claims().to_string()));
    assert_refused(verify(&token), "jwk header");
}

// ------------------------------------------------------- claims

#[test]
fn missing_sub_is_refused() {
    let c = claims_with(json!({ "sub": null }));
    assert_malformed_or_rejected(verify(&EC.token(&c)), "no sub");

    // And login_from_claims never makes a login without a subject.
    assert_eq!(
        login_from_claims(&c, "preferred_username", "groups"),
        Err(TokenError::MissingClaim("sub".into()))
    );
}

#[test]
fn missing_username_claim_is_missing_claim() {
    let c = claims_with(json!({ "preferred_username": null }));
    let verified = verify(&EC.token(&c)).expect("the token itself is fine");
    assert_eq!(
        login_from_claims(&verified, "preferred_username", "groups"),
        Err(TokenError::MissingClaim("preferred_username".into()))
    );
    assert_eq!(
        login_from_claims(&verified, "upn", "groups"),
        Err(TokenError::MissingClaim("upn".into()))
    );
}

#[test]
fn non_string_username_claim_is_missing_claim() {
    for value in [
        json!(42),
        json!(["alice"]),
        json!({ "name": "alice" }),
        json!(true),
    ] {
        let c = claims_with(json!({ "preferred_username": value }));
        assert_eq!(
            login_from_claims(&c, "preferred_username", "groups"),
            Err(TokenError::MissingClaim("preferred_username".into())),
            "{value}"
        );
    }
}

#[test]
fn groups_as_array_single_string_or_absent() {
    let login = |c: Value| login_from_claims(&c, "preferred_username", "groups").unwrap();
    assert_eq!(login(claims()).groups, vec!["ops", "db-admins"]);
    assert_eq!(
        login(claims_with(json!({ "groups": "ops" }))).groups,
        vec!["ops"]
    );
    assert!(
        login(claims_with(json!({ "groups": null })))
            .groups
            .is_empty()
    );
    assert!(
        login(claims_with(json!({ "groups": [] })))
            .groups
            .is_empty()
    );
    assert!(login(claims_with(json!({ "groups": 7 }))).groups.is_empty());
    // Items that are not strings are dropped, not stringified.
    assert_eq!(
        login(claims_with(
            json!({ "groups": ["ops", 1, null, {"g": "x"}, ["y"]] })
        ))
        .groups,
        vec!["ops"]
    );
}

#[test]
fn custom_username_claim_email() {
    let login = login_from_claims(&claims(), "email", "groups").unwrap();
    assert_eq!(login.username, "alice@example.com");
    assert_eq!(login.subject, "248289761001");
}

#[test]
fn amr_and_has_mfa() {
    let login = |amr: Value| {
        login_from_claims(&claims_with(json!({ "amr": amr })), "email", "groups").unwrap()
    };
    assert!(!login(json!(null)).has_mfa());
    assert!(login(json!(null)).amr.is_empty());
    assert!(!login(json!(["pwd"])).has_mfa());
    assert!(!login(json!(["pwd", "kba", "sms-but-not-listed"])).has_mfa());
    // `mfa`, or two kinds of factor.
    assert!(login(json!(["mfa"])).has_mfa());
    for m in ["otp", "hwk", "swk", "sms", "sc", "fpt", "face"] {
        assert!(login(json!(["pwd", m])).has_mfa(), "pwd + {m}");
    }
    assert!(login(json!(["hwk", "fpt"])).has_mfa());
    // One method, or two of one kind, is one factor.
    for one in [
        json!(["otp"]),
        json!(["swk"]),
        json!(["hwk"]),
        json!(["sc"]),
        json!(["fido"]),
        json!(["pwd", "kba"]),
        json!(["otp", "sms"]),
        json!(["hwk", "swk"]),
        json!(["pwd", "fido"]),
    ] {
        assert!(!login(one.clone()).has_mfa(), "{one}");
    }
    // A single string is read as a one-element list.
    assert_eq!(login(json!("otp")).amr, vec!["otp"]);
    assert!(!login(json!("otp")).has_mfa());
    // Case matters: RFC 8176 values are lower case.
    assert!(!login(json!(["OTP"])).has_mfa());
}

// ------------------------------------------------------- garbage

#[test]
fn garbage_is_malformed_or_rejected_never_a_panic() {
    let header = b64(json!({ "alg": "ES256", "kid": EC.kid }).to_string());
    let payload = b64(claims().to_string());
    let mut inputs: Vec<String> = [
        "",
        ".",
        "..",
        "...",
        "a",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "a.b.c.d.e",
        "eyJ.eyJ.",
        "====.====.====",
        "%%%.%%%.%%%",
        "null",
        "{}",
        "\u{0}.\u{0}.\u{0}",
        "ä.ö.ü",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    inputs.push(format!("{header}.{payload}"));
    inputs.push(format!("{header}.{payload}.sig.extra"));
    inputs.push(format!("{header}..sig"));
    inputs.push(format!(".{payload}.sig"));
    inputs.push(format!("{header}.{}.AAAA", b64("not json")));
    inputs.push(format!("{header}.{}.AAAA", b64("[1,2,3]")));
    inputs.push(format!("{header}.{}.AAAA", b64("\"a string\"")));
    inputs.push(format!("{}.{payload}.AAAA", b64("not json")));
    inputs.push(format!("{}.{payload}.AAAA", b64("{}")));
    inputs.push(format!("{}.{payload}.AAAA", b64(r#"{"alg":7}"#)));
    inputs.push(format!("{}.{payload}.AAAA", b64(r#"{"alg":"XX99"}"#)));
    inputs.push(format!("{header}.{payload}.!!!"));
    inputs.push(format!("{header}.{payload}=.AAAA"));
    inputs.push("a.".repeat(10_000));
    inputs.push("A".repeat(1 << 20));
    let rng = SystemRandom::new();
    for len in [1, 2, 3, 16, 64, 257, 4096] {
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes).unwrap();
        inputs.push(String::from_utf8_lossy(&bytes).into_owned());
        inputs.push(b64(&bytes));
        inputs.push(format!("{}.{}.{}", b64(&bytes), b64(&bytes), b64(&bytes)));
        inputs.push(format!("{header}.{}.{}", b64(&bytes), b64(&bytes)));
    }
    for raw in &inputs {
        match verify(raw) {
            Err(TokenError::Malformed(_) | TokenError::Rejected(_)) => {}
            other => panic!("{:?}: {other:?}", raw.chars().take(80).collect::<String>()),
        }
    }
}

#[test]
fn invalid_configured_issuer_is_rejected_not_a_panic() {
    let token = EC.token(&claims());
    for iss in ["", "not a url", "idp.example.com"] {
        assert_rejected(
            verify_id_token(&token, &issuer_jwks(), iss, CLIENT, now()),
            iss,
        );
    }
}

/// Endpoints an IdP announces must be https; plain http only to this
/// machine (a local test IdP), never to a name that merely starts like one.
#[test]
fn announced_endpoints_must_be_https() {
    for good in [
        "https://idp.example.com/jwks",
        "http://127.0.0.1:8080/jwks",
        "http://127.1.2.3/token",
        "http://[::1]:9/device",
        "http://localhost/jwks",
    ] {
        assert!(require_https("jwks_uri", good).is_ok(), "{good}");
    }
    for bad in [
        "http://idp.example.com/jwks",
        "http://127.0.0.1.evil.example/jwks",
        "http://localhost.evil.example/token",
        "http://10.0.0.1/token",
        "ftp://idp.example.com/jwks",
        "not a url",
    ] {
        let e = require_https("token_endpoint", bad).unwrap_err();
        assert!(
            matches!(&e, OidcError::Misconfigured(m) if m.contains("token_endpoint") && m.contains("https")),
            "{bad}: {e:?}"
        );
    }
}

/// An e-mail address names a user only once the IdP verified it: anyone
/// may type one into a self-service profile.
#[test]
fn an_email_user_name_needs_email_verified() {
    for verified in [json!(false), json!(null), json!("true")] {
        let c = claims_with(json!({ "email_verified": verified }));
        let e = login_from_claims(&c, "email", "groups").unwrap_err();
        assert!(
            matches!(&e, TokenError::Rejected(m) if m.contains("email_verified")),
            "{verified}: {e:?}"
        );
    }
    // Other claims do not need it.
    let c = claims_with(json!({ "email_verified": false }));
    assert!(login_from_claims(&c, "preferred_username", "groups").is_ok());
}

/// `azp` (the authorized party), when present, must be this client; `nbf`
/// in the future (beyond the clock skew) is refused, in the past accepted.
#[test]
fn azp_and_nbf_are_checked() {
    assert!(verify(&EC.token(&claims_with(json!({ "azp": CLIENT })))).is_ok());
    assert_rejected_for(
        verify(&EC.token(&claims_with(json!({ "azp": "another-client" })))),
        "another party",
        "azp of another client",
    );
    assert_malformed_or_rejected(
        verify(&EC.token(&claims_with(json!({ "azp": 7 })))),
        "azp that is not a string",
    );
    assert!(verify(&EC.token(&claims_with(json!({ "nbf": ts(-60) })))).is_ok());
    assert_rejected_for(
        verify(&EC.token(&claims_with(json!({ "nbf": ts(3600) })))),
        "not valid before",
        "nbf an hour ahead",
    );
    assert_malformed_or_rejected(
        verify(&EC.token(&claims_with(json!({ "nbf": "soon" })))),
        "nbf that is not a number",
    );
}

// ------------------------------------------------------- nonce (code flow)

fn verify_nonce(raw: &str, nonce: Option<&str>) -> Result<Value, TokenError> {
    verify_id_token_nonce(raw, &issuer_jwks(), ISSUER, CLIENT, now(), nonce)
}

#[test]
fn a_browser_login_needs_exactly_its_nonce() {
    let with = EC.token(&claims_with(json!({"nonce": "n-1"})));
    verify_nonce(&with, Some("n-1")).expect("the login's own nonce");
    assert_rejected_for(
        verify_nonce(&with, Some("n-2")),
        "nonce",
        "another login's nonce",
    );
    assert_rejected_for(
        verify_nonce(&with, Some("")),
        "nonce",
        "an empty expected nonce",
    );
    let without = EC.token(&claims());
    assert_rejected_for(
        verify_nonce(&without, Some("n-1")),
        "nonce",
        "no nonce in the token",
    );
    // The device flow has none to check; a token with one still passes there.
    verify_nonce(&without, None).expect("device flow, no nonce");
    verify_nonce(&with, None).expect("device flow, a nonce");
    // The other checks stay: a good nonce does not save a foreign audience.
    let foreign = EC.token(&claims_with(json!({"nonce": "n-1", "aud": "someone-else"})));
    assert_refused(verify_nonce(&foreign, Some("n-1")), "another audience");
}

#[test]
fn random_tokens_are_256_bits_and_differ() {
    let a = super::random_token().unwrap();
    let b = super::random_token().unwrap();
    assert_eq!(a.len(), 43);
    assert_ne!(a, b);
}
