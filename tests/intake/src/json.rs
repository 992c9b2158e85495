//! A JSON tree that borrows from the request body, for the vendor intakes'
//! checks.
//!
//! Reading a request into [`serde_json::Value`] costs an allocation per
//! string and a map insert per member. A [`Tree`] borrows every string that
//! holds no escape from the body and keeps an object's members in a vector,
//! so a line costs a few allocations. It must read exactly what a `Value`
//! would: the same parser with the same nesting limit, the same numbers,
//! and the last of duplicate keys. [`Tree::to_value`] builds that `Value`
//! (for recorded entries), [`Tree::json_len`] is the length of its compact
//! JSON text without writing it, and `Display` prints it as `Value` does
//! (in error messages). This module must not know any vendor's format.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::scan;

/// A JSON value whose strings borrow from the parsed text where they can.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tree<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Tree<'a>>),
    /// Members in the order of the text, each key once (the last of
    /// duplicate keys wins, as in a `Value`).
    Object(Vec<(Cow<'a, str>, Tree<'a>)>),
}

impl<'a> Tree<'a> {
    /// Parses `bytes` as one JSON text, as `serde_json::from_slice` does.
    pub fn parse(bytes: &'a [u8]) -> serde_json::Result<Tree<'a>> {
        // Checking the whole text's UTF-8 at once is cheaper than string by
        // string; on valid UTF-8 both parsers read the same, and otherwise
        // `from_slice` finds the same error it always did.
        match std::str::from_utf8(bytes) {
            Ok(text) => Tree::parse_str(text),
            Err(_) => read(serde_json::Deserializer::from_slice(bytes)),
        }
    }

    /// Parses `text` as one JSON text, as `serde_json::from_str` does.
    pub fn parse_str(text: &'a str) -> serde_json::Result<Tree<'a>> {
        read(serde_json::Deserializer::from_str(text))
    }

    /// The JSON type's name, for messages: "null", "boolean", "number",
    /// "string", "array" or "object".
    pub fn kind(&self) -> &'static str {
        match self {
            Tree::Null => "null",
            Tree::Bool(_) => "boolean",
            Tree::Number(_) => "number",
            Tree::String(_) => "string",
            Tree::Array(_) => "array",
            Tree::Object(_) => "object",
        }
    }

    /// The member `key` of an object; `None` for other types.
    pub fn get(&self, key: &str) -> Option<&Tree<'a>> {
        match self {
            Tree::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Tree::String(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Tree::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Tree::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    /// The `Value` that `serde_json` reads from the same text.
    pub fn to_value(&self) -> Value {
        match self {
            Tree::Null => Value::Null,
            Tree::Bool(b) => Value::Bool(*b),
            Tree::Number(n) => Value::Number(n.clone()),
            Tree::String(text) => Value::String(text.to_string()),
            Tree::Array(items) => Value::Array(items.iter().map(Tree::to_value).collect()),
            Tree::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_value()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }

    /// [`to_value`](Tree::to_value), reusing the strings this tree owns.
    pub fn into_value(self) -> Value {
        match self {
            Tree::Null => Value::Null,
            Tree::Bool(b) => Value::Bool(b),
            Tree::Number(n) => Value::Number(n),
            Tree::String(text) => Value::String(text.into_owned()),
            Tree::Array(items) => Value::Array(items.into_iter().map(Tree::into_value).collect()),
            Tree::Object(members) => Value::Object(
                members
                    .into_iter()
                    .map(|(key, value)| (key.into_owned(), value.into_value()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }

    /// Whether the value's compact JSON text is longer than `limit` bytes.
    /// Counts exactly only when a quick bound (every string byte escaped)
    /// is over `limit`.
    pub fn json_len_exceeds(&self, limit: usize) -> bool {
        self.json_len_bound() > limit && self.json_len() > limit
    }

    /// At least [`json_len`](Tree::json_len): a string byte takes at most 6
    /// bytes (`\u001f`), a number at most 24 (`-2.2250738585072014e-308`).
    fn json_len_bound(&self) -> usize {
        match self {
            Tree::Null | Tree::Bool(_) => scan::WORD_BOUND,
            Tree::Number(_) => scan::NUMBER_BOUND,
            Tree::String(text) => scan::str_bound(text),
            Tree::Array(items) => items.iter().fold(2 + items.len(), |sum, item| {
                sum.saturating_add(item.json_len_bound())
            }),
            Tree::Object(members) => {
                members
                    .iter()
                    .fold(2 + 2 * members.len(), |sum, (key, value)| {
                        sum.saturating_add(scan::str_bound(key))
                            .saturating_add(value.json_len_bound())
                    })
            }
        }
    }

    /// Length of the value's compact JSON text (`Value`'s `to_string()`),
    /// without writing it.
    pub fn json_len(&self) -> usize {
        match self {
            Tree::Null | Tree::Bool(true) => 4,
            Tree::Bool(false) => 5,
            Tree::Number(n) => written_len(n),
            Tree::String(text) => str_len(text),
            Tree::Array(items) => {
                let inner: usize = items.iter().map(Tree::json_len).sum();
                2 + inner + items.len().saturating_sub(1)
            }
            Tree::Object(members) => {
                let inner: usize = members
                    .iter()
                    .map(|(key, value)| str_len(key) + 1 + value.json_len())
                    .sum();
                2 + inner + members.len().saturating_sub(1)
            }
        }
    }
}

/// Prints the compact JSON text, as `Value`'s `Display` does (members in
/// key order). For messages, not for hot paths.
impl fmt::Display for Tree<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_value().fmt(f)
    }
}

/// Length of a JSON string's text: its bytes and quotes when nothing needs
/// an escape, else what `serde_json` writes.
fn str_len(text: &str) -> usize {
    // Exactly the bytes `serde_json` escapes: controls, `"` and `\`.
    if text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        written_len(text)
    } else {
        text.len() + 2
    }
}

/// Length of what `serde_json` writes for `value`.
fn written_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing numbers and strings into a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Reads one value into a [`Tree`]. Members and items being read wait on
/// two stacks shared by the whole parse, so that each object and array is
/// allocated once, at its exact size.
struct TreeSeed<'s, 'de> {
    members: &'s mut Vec<(Cow<'de, str>, Tree<'de>)>,
    items: &'s mut Vec<Tree<'de>>,
}

impl<'de> TreeSeed<'_, 'de> {
    fn reborrow(&mut self) -> TreeSeed<'_, 'de> {
        TreeSeed {
            members: &mut *self.members,
            items: &mut *self.items,
        }
    }
}

/// Reads one whole JSON text, as `serde_json::from_str` and `from_slice` do.
fn read<'de, R: serde_json::de::Read<'de>>(
    mut deserializer: serde_json::Deserializer<R>,
) -> serde_json::Result<Tree<'de>> {
    let (mut members, mut items) = (Vec::new(), Vec::new());
    let seed = TreeSeed {
        members: &mut members,
        items: &mut items,
    };
    let tree = seed.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(tree)
}

impl<'de> DeserializeSeed<'de> for TreeSeed<'_, 'de> {
    type Value = Tree<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Tree<'de>, D::Error> {
        // `deserialize_any`, as for a `Value`: the parser then applies the
        // same nesting limit.
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TreeSeed<'_, 'de> {
    type Value = Tree<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Tree<'de>, E> {
        Ok(Tree::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Tree<'de>, E> {
        Ok(Tree::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Tree<'de>, E> {
        Ok(Tree::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Tree<'de>, E> {
        Ok(Number::from_f64(value).map_or(Tree::Null, Tree::Number))
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Tree<'de>, E> {
        Ok(Tree::String(Cow::Borrowed(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Tree<'de>, E> {
        Ok(Tree::String(Cow::Owned(value.to_string())))
    }

    fn visit_string<E>(self, value: String) -> Result<Tree<'de>, E> {
        Ok(Tree::String(Cow::Owned(value)))
    }

    fn visit_none<E>(self) -> Result<Tree<'de>, E> {
        Ok(Tree::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Tree<'de>, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_unit<E>(self) -> Result<Tree<'de>, E> {
        Ok(Tree::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Tree<'de>, A::Error> {
        let base = self.items.len();
        while let Some(item) = seq.next_element_seed(self.reborrow())? {
            self.items.push(item);
        }
        Ok(Tree::Array(self.items.drain(base..).collect()))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Tree<'de>, A::Error> {
        let base = self.members.len();
        while let Some(key) = map.next_key_seed(Key)? {
            let value = map.next_value_seed(self.reborrow())?;
            self.members.push((key, value));
        }
        let mut members: Vec<_> = self.members.drain(base..).collect();
        keep_last_of_each_key(&mut members);
        Ok(Tree::Object(members))
    }
}

/// An object key, borrowed when it holds no escape.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value.to_string()))
    }

    fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value))
    }
}

/// Drops every member whose key comes again later, as inserting the
/// members into a map one by one would.
fn keep_last_of_each_key<V>(members: &mut Vec<(Cow<'_, str>, V)>) {
    let n = members.len();
    // Few members (every log line): compare pairs, no allocation.
    if n <= 16 && !(1..n).any(|j| (0..j).any(|i| members[i].0 == members[j].0)) {
        return;
    }
    let mut order: Vec<usize> = (0..n).collect();
    // Stable: members with one key stay in text order, the last one last.
    order.sort_by(|&a, &b| members[a].0.cmp(&members[b].0));
    let mut keep = vec![true; n];
    for pair in order.windows(2) {
        if members[pair[0]].0 == members[pair[1]].0 {
            keep[pair[0]] = false;
        }
    }
    let mut at = 0;
    members.retain(|_| {
        at += 1;
        keep[at - 1]
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts whose `Value` has duplicate keys, escapes, numbers of every
    /// kind, nesting and whitespace.
    const TEXTS: &[&str] = &[
        r#"null"#,
        r#"true"#,
        r#"[false, 0, -0, -1, 18446744073709551615, -9223372036854775808, 1.5, 1e5, 1E300, 2.5e-8, 123456789012345678901234567890]"#,
        r#"[-2.2250738585072014e-308, -0.000012345678901234567, -1234567890123456.7]"#,
        r#""plain""#,
        r#""esc\"aped\\ \/ \n\t\r\b\f \u0001 \u00e9 é \ud83d\ude00""#,
        r#"{"a":1,"b":{"c":[1,{"d":null}]},"a":"again","e":{}}"#,
        r#"{ "message" : "x" , "message":7, "timestamp":1714564800000 }"#,
        r#"{"k\u0065y":1,"key":2}"#,
        r#"[[],{},[[]],{"":""}]"#,
    ];

    #[test]
    fn the_tree_reads_what_a_value_reads() {
        for text in TEXTS {
            let value: Value = serde_json::from_str(text).unwrap();
            let json = Tree::parse_str(text).unwrap();
            assert_eq!(json.to_value(), value, "{text}");
            assert_eq!(json.clone().into_value(), value, "{text}");
            let len = value.to_string().len();
            assert_eq!(json.json_len(), len, "{text}");
            assert!(json.json_len_bound() >= len, "{text}");
            assert!(json.json_len_exceeds(len - 1) && !json.json_len_exceeds(len));
            assert_eq!(json.to_string(), value.to_string(), "{text}");
        }
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_at_any_count() {
        let many: Vec<String> = (0..40).map(|i| format!(r#""k{}":{i}"#, i % 7)).collect();
        let text = format!("{{{}}}", many.join(","));
        let value: Value = serde_json::from_str(&text).unwrap();
        let json = Tree::parse_str(&text).unwrap();
        assert_eq!(json.to_value(), value);
        assert_eq!(json.get("k3").and_then(Tree::as_i64), Some(38));
        let Tree::Object(members) = json else {
            panic!("an object")
        };
        assert_eq!(members.len(), 7);
    }

    #[test]
    fn strings_without_escapes_borrow_from_the_text() {
        let json = Tree::parse_str(r#"{"plain":"text","esc":"a\nb"}"#).unwrap();
        assert!(matches!(
            json.get("plain"),
            Some(Tree::String(Cow::Borrowed("text")))
        ));
        assert!(matches!(json.get("esc"), Some(Tree::String(Cow::Owned(_)))));
    }

    #[test]
    fn errors_are_the_ones_serde_json_gives_a_value() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for text in [
            "",
            "[1,",
            "{\"a\" 1}",
            "[1] x",
            "1e400",
            "\"\\x\"",
            deep.as_str(),
        ] {
            let value = serde_json::from_str::<Value>(text).unwrap_err();
            let json = Tree::parse_str(text).unwrap_err();
            assert_eq!(json.to_string(), value.to_string(), "{text:?}");
        }
    }
}
