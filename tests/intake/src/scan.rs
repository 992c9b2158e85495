//! Reading request JSON without building anything, for the vendors' fast
//! paths.
//!
//! A fast path recognises a request that plainly passes every check of its
//! vendor and reads from it only what the counters need. On anything else (a
//! type it does not expect, a repeated field, a size near a limit, broken
//! JSON) it gives up, and the full checks on a [`Tree`](crate::json::Tree)
//! decide and answer. A fast path may give up more often than needed, but
//! must never pass what the full checks refuse, nor read other times or
//! marks: each vendor's tests hold the two to that.
//!
//! Every seed here reads its value with `deserialize_any`, as a `Tree` does,
//! so the parser applies the same nesting limit, and answers an upper bound
//! of the value's compact JSON length (a string byte takes at most 6 bytes,
//! a number at most 24), for the vendors' size limits. This module must not
//! know any vendor's format.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Reads one whole JSON text with `seed`; `None` when the text is not UTF-8
/// or not JSON, or the seed gave up.
pub(crate) fn read<'de, S: DeserializeSeed<'de>>(bytes: &'de [u8], seed: S) -> Option<S::Value> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = seed.deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    Some(value)
}

/// The error a seed gives up with: the full checks take over.
pub(crate) fn give_up<E: de::Error>() -> E {
    E::custom("left to the full checks")
}

/// At least the length of a string's JSON text.
pub(crate) fn str_bound(text: &str) -> usize {
    text.len().saturating_mul(6).saturating_add(2)
}

/// At least the length of a number's JSON text: serde_json writes at most
/// 20 characters for an integer and 24 for a float
/// (`-2.2250738585072014e-308`).
pub(crate) const NUMBER_BOUND: usize = 24;

/// At least the length of `true`, `false` or `null`.
pub(crate) const WORD_BOUND: usize = 5;

/// The JSON type of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Bool,
    /// A number that is an `i64` or a `u64`.
    Integer,
    /// Any other number.
    Float,
    String,
    Array,
    Object,
}

/// Any value: its type and length bound.
pub(crate) struct Any;

impl<'de> DeserializeSeed<'de> for Any {
    type Value = (Kind, usize);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Any {
    type Value = (Kind, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok((Kind::Bool, WORD_BOUND))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok((Kind::Integer, NUMBER_BOUND))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok((Kind::Integer, NUMBER_BOUND))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok((Kind::Float, NUMBER_BOUND))
    }

    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok((Kind::String, str_bound(value)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok((Kind::Null, WORD_BOUND))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok((Kind::Null, WORD_BOUND))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut bound: usize = 2;
        while let Some((_, item)) = seq.next_element_seed(Any)? {
            bound = bound.saturating_add(item).saturating_add(1);
        }
        Ok((Kind::Array, bound))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut bound: usize = 2;
        while let Some((_, key)) = map.next_key_seed(Key(&[]))? {
            let (_, value) = map.next_value_seed(Any)?;
            bound = bound
                .saturating_add(key)
                .saturating_add(value)
                .saturating_add(2);
        }
        Ok((Kind::Object, bound))
    }
}

/// An object key: which of the names it is, if any, and its length bound.
pub(crate) struct Key<'n>(pub &'n [&'static str]);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = (Option<usize>, usize);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = (Option<usize>, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        let at = self.0.iter().position(|name| *name == value);
        Ok((at, str_bound(value)))
    }
}

/// An object key that holds no escape, borrowed from the text (else give
/// up).
pub(crate) struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = &'de str;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<&'de str, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = &'de str;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<&'de str, E> {
        Ok(value)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<&'de str, E> {
        Err(give_up())
    }
}

/// A string that `accept` accepts (else give up): its length bound.
pub(crate) struct Str<F>(pub F);

impl<'de, F: FnOnce(&str) -> bool> DeserializeSeed<'de> for Str<F> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, F: FnOnce(&str) -> bool> Visitor<'de> for Str<F> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<usize, E> {
        if (self.0)(value) {
            Ok(str_bound(value))
        } else {
            Err(give_up())
        }
    }
}

/// A string that is one of the names (else give up): which one, and its
/// length bound.
pub(crate) struct OneOf<'n>(pub &'n [&'static str]);

impl<'de> DeserializeSeed<'de> for OneOf<'_> {
    type Value = (usize, usize);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OneOf<'_> {
    type Value = (usize, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("one of the names")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        match self.0.iter().position(|name| *name == value) {
            Some(at) => Ok((at, str_bound(value))),
            None => Err(give_up()),
        }
    }
}

/// A number that fits an `i64` (what `Value::as_i64` reads), else give up.
pub(crate) struct Int;

impl<'de> DeserializeSeed<'de> for Int {
    type Value = i64;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<i64, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Int {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E>(self, value: i64) -> Result<i64, E> {
        Ok(value)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<i64, E> {
        i64::try_from(value).map_err(|_| give_up())
    }
}

/// Any number, as `f64` (what `Value::as_f64` reads), else give up.
pub(crate) struct Float;

impl<'de> DeserializeSeed<'de> for Float {
    type Value = f64;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<f64, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Float {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_i64<E>(self, value: i64) -> Result<f64, E> {
        Ok(value as f64)
    }

    fn visit_u64<E>(self, value: u64) -> Result<f64, E> {
        Ok(value as f64)
    }

    fn visit_f64<E>(self, value: f64) -> Result<f64, E> {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::json::Tree;

    #[test]
    fn bounds_are_never_under_the_compact_length() {
        for text in [
            r#"null"#,
            r#"[true, false, 0, -1, 1e5, 1E15, -0, 2.5e-8, 123456789012345678901234567890]"#,
            r#""esc\"aped\\ \/ \n\t \u0001 \u00e9 é""#,
            r#"{"a":1,"b":{"c":[1,{"d":null}]},"a":"again","e":{}}"#,
            r#"{"k\u0065y":"\u0000\u0000","key":[[],{}]}"#,
        ] {
            let exact = serde_json::from_str::<Value>(text)
                .unwrap()
                .to_string()
                .len();
            let (_, bound) = read(text.as_bytes(), Any).unwrap();
            assert!(bound >= exact, "{text}: {bound} < {exact}");
        }
    }

    #[test]
    fn numbers_read_as_a_value_reads_them() {
        for text in [
            "0",
            "-1",
            "9223372036854775807",
            "9223372036854775808",
            "1.5",
            "-0",
            "1e3",
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(read(text.as_bytes(), Int), value.as_i64(), "{text}");
            assert_eq!(read(text.as_bytes(), Float), value.as_f64(), "{text}");
        }
        assert_eq!(read(b"\"7\"", Int), None);
    }

    #[test]
    fn what_is_not_plain_is_left_to_the_full_checks() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for text in ["", "[1,", "[] x", "\"x\" 1", deep.as_str()] {
            assert!(read(text.as_bytes(), Any).is_none(), "{text:?}");
            assert!(Tree::parse(text.as_bytes()).is_err(), "{text:?}");
        }
        assert!(read(b"[\"caf\xe9\"]", Any).is_none());
        assert_eq!(read(b"\"info\"", OneOf(&["warn", "info"])), Some((1, 26)));
        assert_eq!(read(b"\"loud\"", OneOf(&["warn", "info"])), None);
        assert_eq!(read(b"7", Str(|_: &str| true)), None);
        assert_eq!(read(br#""key""#, Name), Some("key"));
        assert_eq!(read(br#""k\u0065y""#, Name), None);
    }
}
