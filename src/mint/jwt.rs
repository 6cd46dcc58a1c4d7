//! `kind = "jwt"`: JWTs signed ES256 with the environment's own key (ring, P-256, fixed-width
//! r‖s signatures as JWS requires). The private key is created on first use, sealed with the
//! environment's data key and stored; the public half is served as the environment's JWKS.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::MintError;
use crate::clock::SharedClock;
use crate::crypto::sha256;
use crate::keys::signing::{KeyStore, StoredKey};

/// An ES256 signing key with its key id and public JWK.
pub struct JwtSigner {
    kid: String,
    pair: EcdsaKeyPair,
    jwk: Value,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl JwtSigner {
    /// A new random key, returned with its PKCS#8 encoding (to be sealed and stored).
    pub fn generate() -> Result<(Self, Zeroizing<Vec<u8>>), MintError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| MintError::Crypto("key generation failed".into()))?;
        let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
        Ok((Self::from_pkcs8(&pkcs8)?, pkcs8))
    }

    /// Loads a key from PKCS#8 DER.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, MintError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|_| MintError::Key("stored signing key is not a P-256 PKCS#8 key".into()))?;
        let public = pair.public_key().as_ref();
        // Uncompressed point: 0x04 ‖ x ‖ y.
        if public.len() != 65 {
            return Err(MintError::Key("unexpected public key encoding".into()));
        }
        let x = B64.encode(&public[1..33]);
        let y = B64.encode(&public[33..65]);
        // RFC 7638 thumbprint: members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64.encode(sha256(canonical.as_bytes()));
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"});
        Ok(Self { kid, pair, jwk })
    }

    /// Key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Public JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// Signs `claims` as a compact JWS with header `{"alg":"ES256","typ":"JWT","kid":…}`.
    pub fn sign(&self, claims: &Value) -> Result<String, MintError> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let mut out = String::with_capacity(512);
        out.push_str(&B64.encode(header.to_string()));
        out.push('.');
        out.push_str(&B64.encode(claims.to_string()));
        let sig = self
            .pair
            .sign(&SystemRandom::new(), out.as_bytes())
            .map_err(|_| MintError::Crypto("signing failed".into()))?;
        out.push('.');
        out.push_str(&B64.encode(sig.as_ref()));
        Ok(out)
    }
}

impl JwtSigner {
    /// Verifies a JWT this key signed (ES256, this kid); the claims when valid. Expiry is the
    /// caller's business.
    pub fn verify(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, p, sig) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
        if header["alg"] != "ES256" || header["kid"].as_str() != Some(self.kid.as_str()) {
            return None;
        }
        let sig = B64.decode(sig).ok()?;
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            self.pair.public_key().as_ref(),
        );
        let signed = &token[..h.len() + 1 + p.len()];
        public.verify(signed.as_bytes(), &sig).ok()?;
        serde_json::from_slice(&B64.decode(p).ok()?).ok()
    }
}

/// The payload of a compact JWT, NOT verified (to find which key should verify it).
pub fn unverified_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&B64.decode(payload).ok()?).ok()
}

impl StoredKey for JwtSigner {
    const PURPOSE: &'static str = "jwt";

    fn generate(
        _env: &str,
        _clock: &SharedClock,
    ) -> Result<(String, Zeroizing<Vec<u8>>, String), MintError> {
        let (signer, pkcs8) = JwtSigner::generate()?;
        Ok((signer.kid().to_string(), pkcs8, signer.jwk().to_string()))
    }

    fn load(_public: &str, pkcs8: &[u8]) -> Result<Self, MintError> {
        JwtSigner::from_pkcs8(pkcs8)
    }
}

/// The JWT signing keys of every environment.
pub type Signers = KeyStore<JwtSigner>;

/// Mints JWTs signed by the environment's key: `iss` the environment's issuer URL, `sub` of
/// the source token, `aud` of the grant, `jti` the credential id, the grant's claims, and the
/// source's chosen claims under `src` (SPEC §3).
pub struct JwtMinter {
    signers: std::sync::Arc<Signers>,
}

impl JwtMinter {
    /// A minter over the environments' signing keys.
    #[must_use]
    pub fn new(signers: std::sync::Arc<Signers>) -> Self {
        Self { signers }
    }
}

impl super::Minter for JwtMinter {
    async fn prepare(
        &self,
        _grant: &crate::policy::Grant,
        cx: &super::MintContext<'_>,
    ) -> Result<super::Prepared, MintError> {
        Ok(super::Prepared::Jwt(self.signers.for_env(cx.env).await?))
    }

    fn issue(
        &self,
        grant: &crate::policy::Grant,
        prepared: &super::Prepared,
        cx: &super::MintContext<'_>,
    ) -> Result<super::Minted, MintError> {
        let (crate::policy::GrantKind::Jwt { audience, claims }, super::Prepared::Jwt(signer)) =
            (&grant.kind, prepared)
        else {
            return Err(MintError::Key("signing key not loaded".into()));
        };
        let id = cx.credential_id()?;
        let src = cx.source;
        let mut body = claims.clone();
        let mut src_claims = serde_json::Map::new();
        for name in crate::exchange::ACTOR_CLAIMS {
            if let Some(v) = src.claims.get(*name) {
                src_claims.insert((*name).to_string(), v.clone());
            }
        }
        src_claims.insert("iss".into(), Value::String(src.issuer.clone()));
        for (k, v) in [
            ("iss", Value::String(cx.jwt_issuer.to_string())),
            ("sub", Value::String(src.subject.clone())),
            ("aud", Value::String(audience.clone())),
            ("iat", json!(cx.now)),
            ("nbf", json!(cx.now)),
            ("exp", json!(cx.expires_at)),
            ("jti", Value::String(id.clone())),
            ("env", Value::String(cx.env.to_string())),
            ("role", Value::String(cx.role.to_string())),
            ("lease_id", Value::String(cx.lease_id.to_string())),
            ("src", Value::Object(src_claims)),
        ] {
            body.insert(k.to_string(), v);
        }
        let jwt = signer.sign(&Value::Object(body))?;
        let row = cx.row(id, grant, None, "[]".to_string());
        Ok(super::Minted {
            credential: super::IssuedCredential {
                name: grant.name.clone(),
                kind: super::Kind::Jwt,
                value: secrecy::SecretString::from(jwt),
                public: serde_json::Map::new(),
                expires_at: cx.expires_at,
            },
            row,
        })
    }

    async fn teardown(&self, _prepared: &super::Prepared) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_verifies_with_the_public_jwk() {
        let (s, pkcs8) = JwtSigner::generate().unwrap();
        let again = JwtSigner::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(s.kid(), again.kid());
        let jwt = s.sign(&json!({"sub": "x"})).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let sig = B64.decode(parts[2]).unwrap();
        assert_eq!(sig.len(), 64, "fixed r||s");
        let jwk = s.jwk();
        let mut point = vec![4u8];
        point.extend(B64.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(B64.decode(jwk["y"].as_str().unwrap()).unwrap());
        let pk = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            point,
        );
        let msg = format!("{}.{}", parts[0], parts[1]);
        pk.verify(msg.as_bytes(), &sig).unwrap();
        assert!(!format!("{s:?}").contains(&B64.encode(&pkcs8[..])));
    }
}
