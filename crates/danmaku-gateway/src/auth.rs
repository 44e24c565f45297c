//! Signed identities: HS256 JWTs carrying a user id, a display name, a role
//! and an expiry. The gateway checks them before the upgrade and again when
//! a connection refreshes its token with `auth`; operators and tests make
//! them with [`issue`] (the binary's `token` subcommand).
//!
//! Errors here never hold the token: it is a credential, and messages end up
//! in HTTP bodies and logs.

use danmaku_proto::{validate_nick, Role};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Settings;

/// How far past `exp` a token is still honoured, in seconds: clocks of the
/// issuer and of the gateways drift a little, and a token should not fail
/// on one gateway while it works on the next. Applies at the handshake, to
/// `auth` and to posts on an open connection alike.
pub const LEEWAY_SECS: u64 = 5;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id; the connection's `user`.
    pub sub: String,
    /// The display name; checked like a `?nick=`.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// The rooms a moderator may act in; absent means every room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

impl Claims {
    /// Whether these claims let their holder act in `room`: moderators and
    /// admins, in the rooms listed, or anywhere when none are.
    pub fn may_act_in(&self, room: &str) -> bool {
        self.role >= Role::Moderator
            && self
                .rooms
                .as_ref()
                .is_none_or(|rooms| rooms.iter().any(|r| r == room))
    }
}

/// Why a token was refused; the message is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or its claims are missing or of the wrong type.
    #[error("invalid token: {0}")]
    Malformed(String),
    /// Signed with none of the configured secrets, or not with HS256.
    #[error("invalid token: the signature does not verify")]
    BadSignature,
    /// Past `exp` plus the leeway.
    #[error("token expired")]
    Expired,
    /// The `name` claim is not a valid nickname.
    #[error("invalid token: name: {0}")]
    BadName(String),
    /// No secret is configured to sign with.
    #[error("no auth_secret is configured")]
    NoSecret,
}

/// Checks tokens against the configured secrets.
pub(crate) struct Verifier {
    /// True in `token` mode: posting needs a token.
    pub(crate) required_to_post: bool,
    /// Whether a connection without a token may watch.
    pub(crate) anonymous_watch: bool,
    keys: Vec<DecodingKey>,
    validation: Validation,
}

impl Verifier {
    /// A verifier for the settings' secrets, in order.
    pub(crate) fn new(settings: &Settings) -> Verifier {
        Verifier {
            required_to_post: settings.auth_mode == "token",
            anonymous_watch: settings.anonymous_watch,
            keys: settings
                .auth_secret
                .0
                .iter()
                .map(|s| DecodingKey::from_secret(s.as_bytes()))
                .collect(),
            validation: validation(),
        }
    }

    /// The token's claims, if one of the secrets signed it, it has not
    /// expired (with [`LEEWAY_SECS`]) and its name is a valid nickname;
    /// the name comes back trimmed.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        verify_with(&self.keys, &self.validation, token)
    }
}

/// HS256 only, `exp` required and checked with the leeway. `aud` is not
/// part of these tokens, so an issuer that adds one is not refused for it.
fn validation() -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = LEEWAY_SECS;
    v.validate_exp = true;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "sub"]);
    v
}

fn verify_with(
    keys: &[DecodingKey],
    validation: &Validation,
    token: &str,
) -> Result<Claims, TokenError> {
    // The signature is checked before the claims, so only a signature
    // error means "try the next secret".
    for key in keys {
        match jsonwebtoken::decode::<Claims>(token, key, validation) {
            Ok(data) => {
                let mut claims = data.claims;
                claims.name =
                    validate_nick(&claims.name).map_err(|e| TokenError::BadName(e.to_string()))?;
                return Ok(claims);
            }
            Err(e) => match e.kind() {
                ErrorKind::InvalidSignature => continue,
                ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                ErrorKind::InvalidAlgorithm => return Err(TokenError::BadSignature),
                ErrorKind::MissingRequiredClaim(claim) => {
                    return Err(TokenError::Malformed(format!("no `{claim}` claim")))
                }
                ErrorKind::Json(_) => {
                    return Err(TokenError::Malformed("claims of the wrong shape".into()))
                }
                _ => return Err(TokenError::Malformed("not a JWT".into())),
            },
        }
    }
    Err(TokenError::BadSignature)
}

/// Whether claims verified earlier have expired by now (with the leeway).
pub(crate) fn expired(exp: u64) -> bool {
    now_secs() > exp.saturating_add(LEEWAY_SECS)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    danmaku_bus::now_ms() / 1000
}

/// Signs `claims` with `secret` (HS256).
pub fn sign(secret: &str, claims: &Claims) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes());
    // HS256 over serializable claims cannot fail.
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("HS256 signs")
}

/// A token for `sub`, valid `ttl_secs` from now, signed with the settings'
/// first secret: what the `token` subcommand prints.
pub fn issue(
    settings: &Settings,
    sub: &str,
    name: &str,
    role: Role,
    ttl_secs: u64,
    rooms: Option<Vec<String>>,
) -> Result<String, TokenError> {
    let secret = settings.auth_secret.0.first().ok_or(TokenError::NoSecret)?;
    let name = validate_nick(name).map_err(|e| TokenError::BadName(e.to_string()))?;
    let claims = Claims {
        sub: sub.to_owned(),
        name,
        role,
        exp: now_secs() + ttl_secs,
        rooms,
    };
    Ok(sign(secret, &claims))
}

/// Checks `token` against the settings' secrets as a gateway would.
pub fn verify(settings: &Settings, token: &str) -> Result<Claims, TokenError> {
    Verifier::new(settings).verify(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(secrets: &[&str]) -> Settings {
        Settings {
            auth_secret: crate::config::Secrets(secrets.iter().map(|s| s.to_string()).collect()),
            ..Settings::default()
        }
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "u1".into(),
            name: " Ann ".into(),
            role: Role::Moderator,
            exp,
            rooms: Some(vec!["a".into()]),
        }
    }

    #[test]
    fn any_configured_secret_verifies_and_names_are_checked() {
        let s = settings(&["new", "old"]);
        let exp = now_secs() + 60;
        for secret in ["new", "old"] {
            let got = verify(&s, &sign(secret, &claims(exp))).unwrap();
            assert_eq!((got.sub.as_str(), got.name.as_str()), ("u1", "Ann"));
            assert!(got.may_act_in("a") && !got.may_act_in("b"));
        }
        assert_eq!(
            verify(&s, &sign("other", &claims(exp))),
            Err(TokenError::BadSignature)
        );
        let mut bad_name = claims(exp);
        bad_name.name = "a\u{202e}b".into();
        assert!(matches!(
            verify(&s, &sign("new", &bad_name)),
            Err(TokenError::BadName(_))
        ));
        assert!(matches!(
            verify(&s, "garbage"),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn expiry_has_a_small_leeway() {
        let s = settings(&["k"]);
        let now = now_secs();
        assert!(verify(&s, &sign("k", &claims(now - 2))).is_ok());
        assert_eq!(
            verify(&s, &sign("k", &claims(now - LEEWAY_SECS - 2))),
            Err(TokenError::Expired)
        );
        assert!(!expired(now) && expired(now - LEEWAY_SECS - 2));
    }

    #[test]
    fn issue_uses_the_first_secret() {
        let token = issue(
            &settings(&["first", "second"]),
            "u",
            "N",
            Role::Admin,
            60,
            None,
        )
        .unwrap();
        assert!(verify(&settings(&["first"]), &token).is_ok());
        assert!(verify(&settings(&["second"]), &token).is_err());
        assert_eq!(
            issue(&settings(&[]), "u", "N", Role::Admin, 60, None),
            Err(TokenError::NoSecret)
        );
    }
}
