//! Structural checks on a JWT before any key is looked up.
//!
//! Nothing here trusts the token: it only decides whether the token is worth verifying
//! (size, shape, algorithm, no `crit`) and reads the claimed issuer so the right key set can be
//! chosen. Every JSON object in the header and payload is parsed strictly: a duplicated member
//! name is refused, so this module and the `openidconnect` crate can never read two different
//! values from one token.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::OidcError;

/// The signature algorithms a token may use. Everything else (`none`, HMAC, ES512, JWE…) is
/// refused before any key is consulted.
pub(crate) const ALLOWED_ALGS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// A token whose shape has been checked but whose signature has not.
pub(crate) struct UnverifiedToken {
    /// The `alg` header value (one of [`ALLOWED_ALGS`]).
    pub(crate) alg: &'static str,
    /// The payload as sent, every member kept.
    pub(crate) payload: Map<String, Value>,
}

impl UnverifiedToken {
    /// The `iss` claim (present and a string, checked by [`parse`]).
    pub(crate) fn issuer(&self) -> &str {
        self.payload
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// Checks size, shape and header, and decodes the payload without verifying anything.
pub(crate) fn parse(token: &str, max_bytes: usize) -> Result<UnverifiedToken, OidcError> {
    if token.len() > max_bytes {
        return Err(OidcError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("a JWT has exactly three dot-separated parts"));
    };
    if header.is_empty() || payload.is_empty() {
        return Err(malformed("a JWT has exactly three dot-separated parts"));
    }

    let header = decode_object(header, "header")?;
    let alg = check_header(&header)?;

    if signature.is_empty() {
        return Err(malformed("the token is not signed"));
    }
    if URL_SAFE_NO_PAD.decode(signature).is_err() {
        return Err(malformed("the signature is not base64url"));
    }

    let payload = decode_object(payload, "payload")?;
    match payload.get("iss") {
        Some(Value::String(iss)) if !iss.is_empty() => {}
        _ => return Err(malformed("the token has no issuer")),
    }
    Ok(UnverifiedToken { alg, payload })
}

/// Validates the JOSE header and returns its algorithm.
fn check_header(header: &Map<String, Value>) -> Result<&'static str, OidcError> {
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.as_str(),
        _ => return Err(malformed("the header has no algorithm")),
    };
    let Some(allowed) = ALLOWED_ALGS.iter().find(|a| **a == alg) else {
        return Err(OidcError::UnsupportedAlgorithm(printable_alg(alg)));
    };
    if header.contains_key("crit") {
        return Err(malformed("critical header parameters are not supported"));
    }
    if header.contains_key("enc") || header.contains_key("zip") {
        return Err(malformed("encrypted tokens are not supported"));
    }
    if header.get("kid").is_some_and(|kid| !kid.is_string()) {
        return Err(malformed("the key id is not a string"));
    }
    Ok(allowed)
}

/// An algorithm name fit for an error message: short, and only the characters algorithm
/// names use, so a hostile header cannot smuggle text into logs.
fn printable_alg(alg: &str) -> String {
    let cleaned: String = alg
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+'))
        .take(16)
        .collect();
    if cleaned.is_empty() {
        "(unprintable)".to_owned()
    } else {
        cleaned
    }
}

fn malformed(why: &str) -> OidcError {
    OidcError::Malformed(why.to_owned())
}

/// Decodes one base64url part into a JSON object, refusing duplicate member names anywhere.
fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, OidcError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| OidcError::Malformed(format!("the {what} is not base64url")))?;
    match parse_strict_json(&bytes) {
        Some(Value::Object(map)) => Ok(map),
        _ => Err(OidcError::Malformed(format!(
            "the {what} is not a JSON object (or repeats a member name)"
        ))),
    }
}

/// Parses JSON like `serde_json::from_slice::<Value>` but fails when an object repeats a key.
/// The error is deliberately dropped: its text could quote the token.
pub(crate) fn parse_strict_json(bytes: &[u8]) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = <StrictValue as serde::Deserialize>::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(value.0)
}

/// A JSON value whose objects have unique keys.
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let StrictValue(v) = access.next_value()?;
            if map.insert(key, v).is_some() {
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn b64(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), b64("sig"))
    }

    const PAYLOAD: &str = r#"{"iss":"https://issuer.example","sub":"x"}"#;

    #[test]
    fn well_formed_token_yields_its_issuer_and_alg() {
        let t = parse(&token(r#"{"alg":"ES256","kid":"k"}"#, PAYLOAD), 16384);
        let t = t.unwrap();
        assert_eq!(t.alg, "ES256");
        assert_eq!(t.issuer(), "https://issuer.example");
        assert_eq!(t.payload["sub"], "x");
    }

    #[test]
    fn oversized_token_is_refused_before_parsing() {
        let big = "a".repeat(16385);
        assert!(matches!(parse(&big, 16384), Err(OidcError::TooLarge)));
    }

    #[test]
    fn token_with_wrong_number_of_parts_is_malformed() {
        for t in ["", "a", "a.b", "a.b.c.d", ".b.c", "a..c"] {
            assert!(
                matches!(parse(t, 16384), Err(OidcError::Malformed(_))),
                "{t}"
            );
        }
    }

    #[test]
    fn alg_none_and_hmac_are_refused() {
        for alg in [
            "none", "HS256", "HS384", "HS512", "ES512", "RSA-OAEP", "nOnE",
        ] {
            let h = format!(r#"{{"alg":"{alg}"}}"#);
            let err = parse(&token(&h, PAYLOAD), 16384).err();
            assert!(
                matches!(err, Some(OidcError::UnsupportedAlgorithm(_))),
                "{alg}"
            );
        }
    }

    #[test]
    fn unsigned_token_is_refused() {
        let t = format!("{}.{}.", b64(r#"{"alg":"RS256"}"#), b64(PAYLOAD));
        assert!(matches!(parse(&t, 16384), Err(OidcError::Malformed(_))));
    }

    #[test]
    fn crit_header_is_refused() {
        let t = token(r#"{"alg":"RS256","crit":["exp"],"exp":1}"#, PAYLOAD);
        assert!(matches!(parse(&t, 16384), Err(OidcError::Malformed(_))));
    }

    #[test]
    fn duplicate_claim_names_are_refused() {
        let t = token(
            r#"{"alg":"RS256"}"#,
            r#"{"iss":"https://a.example","iss":"https://b.example"}"#,
        );
        assert!(matches!(parse(&t, 16384), Err(OidcError::Malformed(_))));
        let nested = token(
            r#"{"alg":"RS256"}"#,
            r#"{"iss":"https://a.example","o":{"k":1,"k":2}}"#,
        );
        assert!(matches!(
            parse(&nested, 16384),
            Err(OidcError::Malformed(_))
        ));
        let header = token(r#"{"alg":"RS256","alg":"none"}"#, PAYLOAD);
        assert!(matches!(
            parse(&header, 16384),
            Err(OidcError::Malformed(_))
        ));
    }

    #[test]
    fn payload_without_issuer_is_malformed() {
        let t = token(r#"{"alg":"RS256"}"#, r#"{"sub":"x"}"#);
        assert!(matches!(parse(&t, 16384), Err(OidcError::Malformed(_))));
    }

    #[test]
    fn hostile_alg_names_are_not_echoed_verbatim() {
        let h = r#"{"alg":"evil\nINFO forged log line with a long long tail"}"#;
        match parse(&token(h, PAYLOAD), 16384) {
            Err(OidcError::UnsupportedAlgorithm(a)) => {
                assert!(!a.contains('\n') && a.len() <= 16, "{a}");
            }
            _ => panic!("expected UnsupportedAlgorithm"),
        }
    }

    #[test]
    fn strict_json_keeps_numbers_and_nesting() {
        let v = parse_strict_json(br#"{"a":[1,-2,3.5,true,null,{"b":"c"}]}"#).unwrap();
        assert_eq!(v["a"][0], 1);
        assert_eq!(v["a"][1], -2);
        assert_eq!(v["a"][2], 3.5);
        assert_eq!(v["a"][5]["b"], "c");
        assert!(parse_strict_json(br#"{"a":1} trailing"#).is_none());
    }
}
