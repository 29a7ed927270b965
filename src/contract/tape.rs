//! A borrowed, flat JSON representation for the fast path of body checks.
//!
//! Parsing a body into a `serde_json::Value` allocates a `String` per key and string value and
//! a B-tree per object; that was over half the time of a request check. A [`Tape`] is one
//! `Vec` of slots in document order (a container records where it ends), with strings and keys
//! borrowed from the body when they have no escapes, parsed by the same `serde_json`
//! deserializer. `jsonschema` validates it directly through its [`Json`] trait
//! ([`TapeJson`]), and [`super::shape::Shapes::clean`] walks it read-only.
//!
//! The fast path only ever says "nothing to report": whenever it cannot (invalid JSON, a
//! duplicate key, a property to strip, a schema violation) the caller runs the `Value` path,
//! so the reported errors are unchanged.

use jsonschema::json::{Array, Json, Node, NodeIdentity, Object};
use jsonschema::types::JsonType;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// One slot of a [`Tape`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Slot<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    /// `len` elements follow; the array's last descendant is at `end - 1`.
    Array {
        len: u32,
        end: u32,
    },
    /// `len` members follow, each a [`Slot::Key`] then its value.
    Object {
        len: u32,
        end: u32,
    },
    Key(Cow<'a, str>),
}

/// A parsed JSON document whose strings borrow from the text where they can.
#[derive(Debug, Default)]
pub(crate) struct Tape<'a> {
    slots: Vec<Slot<'a>>,
}

/// Objects with up to this many members are checked for duplicate keys pairwise.
const PAIRWISE: usize = 16;

impl<'a> Tape<'a> {
    /// Parses `bytes` as `serde_json::from_slice` does; `None` when it fails, and when an object
    /// has a duplicate key (a `Value` keeps only the last one).
    pub(crate) fn parse(bytes: &'a [u8]) -> Option<Tape<'a>> {
        let mut slots = Vec::with_capacity(bytes.len() / 8);
        let mut de = serde_json::Deserializer::from_slice(bytes);
        Build(&mut slots).deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(Tape { slots })
    }

    /// The same `Value` as `serde_json::from_slice` gives for the text it was parsed from.
    pub(crate) fn to_value(&self) -> Value {
        to_value(self.root())
    }

    /// The root value.
    pub(crate) fn root(&self) -> TapeNode<'_> {
        TapeNode {
            slots: &self.slots,
            at: 0,
        }
    }
}

/// Where the value at `at` ends (one past its last descendant).
fn end_of(slots: &[Slot<'_>], at: usize) -> usize {
    match slots[at] {
        Slot::Array { end, .. } | Slot::Object { end, .. } => end as usize,
        _ => at + 1,
    }
}

/// Builds slots from a `serde_json` deserializer.
struct Build<'t, 'de>(&'t mut Vec<Slot<'de>>);

impl<'de> DeserializeSeed<'de> for Build<'_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

fn count<E: de::Error>(n: usize) -> Result<u32, E> {
    u32::try_from(n).map_err(|_| E::custom("too large"))
}

impl<'de> Visitor<'de> for Build<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push(Slot::Bool(v));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(Slot::Number(v.into()));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(Slot::Number(v.into()));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // As `serde_json::Value` does.
        self.0
            .push(Number::from_f64(v).map_or(Slot::Null, Slot::Number));
        Ok(())
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        self.0.push(Slot::String(Cow::Borrowed(v)));
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.0.push(Slot::String(Cow::Owned(v.to_owned())));
        Ok(())
    }

    fn visit_string<E>(self, v: String) -> Result<(), E> {
        self.0.push(Slot::String(Cow::Owned(v)));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push(Slot::Null);
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        self.0.push(Slot::Null);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let at = self.0.len();
        self.0.push(Slot::Array { len: 0, end: 0 });
        let mut len = 0;
        while seq.next_element_seed(Build(&mut *self.0))?.is_some() {
            len += 1;
        }
        let end = count(self.0.len())?;
        self.0[at] = Slot::Array {
            len: count(len)?,
            end,
        };
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let at = self.0.len();
        self.0.push(Slot::Object { len: 0, end: 0 });
        let mut len = 0;
        while let Some(key) = map.next_key_seed(Key)? {
            self.0.push(Slot::Key(key));
            map.next_value_seed(Build(&mut *self.0))?;
            len += 1;
        }
        if has_duplicate_key(self.0, at, len) {
            return Err(de::Error::custom("duplicate key"));
        }
        let end = count(self.0.len())?;
        self.0[at] = Slot::Object {
            len: count(len)?,
            end,
        };
        Ok(())
    }
}

/// Whether the object at `slots[object]` (`len` members, its own slot not yet patched) repeats
/// a key.
fn has_duplicate_key(slots: &[Slot<'_>], object: usize, len: usize) -> bool {
    if len < 2 {
        return false;
    }
    let keys = || {
        let mut at = object + 1;
        (0..len).map(move |_| {
            let key = &slots[at];
            at = end_of(slots, at + 1);
            key
        })
    };
    if len <= PAIRWISE {
        keys()
            .enumerate()
            .any(|(i, key)| keys().skip(i + 1).any(|other| other == key))
    } else {
        let mut seen = HashSet::with_capacity(len);
        !keys().all(|key| seen.insert(key_str(key)))
    }
}

fn key_str<'s>(slot: &'s Slot<'_>) -> &'s str {
    match slot {
        Slot::Key(key) => key,
        _ => "",
    }
}

/// A map key, borrowed when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// The [`Json`] representation of a [`Tape`], for `jsonschema`.
pub(crate) struct TapeJson;

/// One value of a [`Tape`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct TapeNode<'a> {
    slots: &'a [Slot<'a>],
    at: usize,
}

impl<'a> TapeNode<'a> {
    fn slot(&self) -> &'a Slot<'a> {
        &self.slots[self.at]
    }

    /// The members of an object, in document order.
    pub(crate) fn members(&self) -> Option<Members<'a>> {
        match self.slot() {
            Slot::Object { len, .. } => Some(Members {
                slots: self.slots,
                next: self.at + 1,
                left: *len as usize,
            }),
            _ => None,
        }
    }

    /// The elements of an array.
    pub(crate) fn elements(&self) -> Option<Elements<'a>> {
        match self.slot() {
            Slot::Array { len, .. } => Some(Elements {
                slots: self.slots,
                next: self.at + 1,
                left: *len as usize,
            }),
            _ => None,
        }
    }
}

impl Json for TapeJson {
    type Node<'a> = TapeNode<'a>;
    type PreparedKey = String;
    type StringBuffer = ();

    // A lookup scans the members, so a members pass is never worse.
    const KEYS_PER_LOOKUP: usize = 8;
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> String {
        key.to_owned()
    }

    fn with_string_node<T>((): &mut (), string: &str, f: impl FnOnce(TapeNode<'_>) -> T) -> T {
        let slots = [Slot::String(Cow::Borrowed(string))];
        f(TapeNode {
            slots: &slots,
            at: 0,
        })
    }
}

impl<'a> Node<'a, TapeJson> for TapeNode<'a> {
    type Object = TapeObject<'a>;
    type Array = TapeArray<'a>;
    type Number = &'a Number;

    fn as_object(&self) -> Option<TapeObject<'a>> {
        match self.slot() {
            Slot::Object { len, .. } => Some(TapeObject {
                node: *self,
                len: *len as usize,
            }),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<TapeArray<'a>> {
        match self.slot() {
            Slot::Array { len, .. } => Some(TapeArray {
                node: *self,
                len: *len as usize,
            }),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self.slot() {
            Slot::String(s) => Some(Cow::Borrowed(s.as_ref())),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<&'a Number> {
        match self.slot() {
            Slot::Number(n) => Some(n),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.slot() {
            Slot::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.slot(), Slot::Null)
    }

    fn json_type(&self) -> JsonType {
        match self.slot() {
            Slot::Null => JsonType::Null,
            Slot::Bool(_) => JsonType::Boolean,
            Slot::Number(_) => JsonType::Number,
            Slot::String(_) | Slot::Key(_) => JsonType::String,
            Slot::Array { .. } => JsonType::Array,
            Slot::Object { .. } => JsonType::Object,
        }
    }

    fn string_length_within(&self, min: u64, max: u64) -> Option<bool> {
        let Slot::String(string) = self.slot() else {
            return None;
        };
        // A code point takes one to four bytes, so the count lies in `ceil(bytes / 4)..=bytes`.
        let bytes = string.len() as u64;
        let fewest = bytes.div_ceil(4);
        if bytes < min || fewest > max {
            return Some(false);
        }
        if min <= fewest && bytes <= max {
            return Some(true);
        }
        Some((min..=max).contains(&(string.chars().count() as u64)))
    }

    fn equals_value(&self, expected: &Value) -> bool {
        match (self.slot(), expected) {
            (Slot::String(s), Value::String(e)) => s == e,
            (Slot::String(_), _) => false,
            (Slot::Bool(b), Value::Bool(e)) => b == e,
            (Slot::Null, Value::Null) => true,
            (Slot::Number(n), Value::Number(_)) => {
                jsonschema::json::cmp::equal(&Value::Number(n.clone()), expected)
            }
            (Slot::Null | Slot::Bool(_) | Slot::Number(_), _) => false,
            _ => jsonschema::json::cmp::equal(&self.to_value(), expected),
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(to_value(*self))
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(std::ptr::from_ref(self.slot()) as usize))
    }
}

/// The `Value` of a node (for error reports and container comparisons only).
fn to_value(node: TapeNode<'_>) -> Value {
    match node.slot() {
        Slot::Null => Value::Null,
        Slot::Bool(b) => Value::Bool(*b),
        Slot::Number(n) => Value::Number(n.clone()),
        Slot::String(s) | Slot::Key(s) => Value::String(s.to_string()),
        Slot::Array { .. } => Value::Array(
            node.elements()
                .into_iter()
                .flatten()
                .map(to_value)
                .collect(),
        ),
        Slot::Object { .. } => Value::Object(
            node.members()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.to_owned(), to_value(v)))
                .collect::<Map<String, Value>>(),
        ),
    }
}

/// An object of a [`Tape`].
pub(crate) struct TapeObject<'a> {
    node: TapeNode<'a>,
    len: usize,
}

/// An array of a [`Tape`].
pub(crate) struct TapeArray<'a> {
    node: TapeNode<'a>,
    len: usize,
}

/// The members of a [`TapeObject`].
pub(crate) struct Members<'a> {
    slots: &'a [Slot<'a>],
    next: usize,
    left: usize,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, TapeNode<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let slots = self.slots;
        let Slot::Key(key) = &slots[self.next] else {
            unreachable!("a key precedes every member");
        };
        let value = self.next + 1;
        self.next = end_of(slots, value);
        Some((key.as_ref(), TapeNode { slots, at: value }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// The elements of a [`TapeArray`].
pub(crate) struct Elements<'a> {
    slots: &'a [Slot<'a>],
    next: usize,
    left: usize,
}

impl<'a> Iterator for Elements<'a> {
    type Item = TapeNode<'a>;

    fn next(&mut self) -> Option<TapeNode<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let at = self.next;
        self.next = end_of(self.slots, at);
        Some(TapeNode {
            slots: self.slots,
            at,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<'a> Object<'a, TapeJson> for TapeObject<'a> {
    type Node = TapeNode<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, key: &String) -> Option<TapeNode<'a>> {
        self.members()
            .find(|(name, _)| *name == key.as_str())
            .map(|(_, value)| value)
    }

    fn members(&self) -> Members<'a> {
        Members {
            slots: self.node.slots,
            next: self.node.at + 1,
            left: self.len,
        }
    }
}

impl<'a> Array<'a, TapeJson> for TapeArray<'a> {
    type Node = TapeNode<'a>;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        self.len
    }

    fn elements(&self) -> Elements<'a> {
        Elements {
            slots: self.node.slots,
            next: self.node.at + 1,
            left: self.len,
        }
    }
}
