//! The event schema: one JSON object per line (JSONL) or per Kafka message.
//!
//! ```json
//! {"type":"impression","id":"imp-1","ts_ms":1733475000000,
//!  "features":{"user_id":"u42","item_id":"i7","hour":11,"genres":["Comedy","Crime"]},
//!  "dense":[0.1,0.5]}
//! {"type":"action","id":"imp-1","ts_ms":1733475003000,"action":"click"}
//! ```
//!
//! - `type`, `id` (the impression id; an action names the impression it acts on) and `ts_ms`
//!   (event time, ms since the Unix epoch, a non-negative integer) are required;
//! - an impression needs `features`, an object whose values are a string, an integer (INT64
//!   range), a list of them (multi-hot), or `null` (no ids); `dense` (numbers) is optional;
//! - an action needs `action`, its name (`[labels] positive` says which names are positive);
//! - other fields are ignored, so producers can add fields without breaking the learner.
//!
//! [`parse_line`] reads an event straight from the bytes, borrowing strings that need no
//! unescaping. A malformed event is an [`EventError`] whose [`EventErrorKind`] is the reason
//! it is counted under.

use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;

/// One parsed event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// An item shown to a user.
    Impression(Impression<'a>),
    /// A user's action on a shown item.
    Action(Action<'a>),
}

/// An impression event.
#[derive(Debug, Clone, PartialEq)]
pub struct Impression<'a> {
    /// The impression id.
    pub id: Cow<'a, str>,
    /// Event time, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Feature fields in the order given.
    pub features: Vec<(Cow<'a, str>, FeatureValue<'a>)>,
    /// Dense features, when given.
    pub dense: Option<Vec<f32>>,
}

/// An action event.
#[derive(Debug, Clone, PartialEq)]
pub struct Action<'a> {
    /// The impression acted on.
    pub id: Cow<'a, str>,
    /// Event time, ms since the Unix epoch.
    pub ts_ms: u64,
    /// The action's name (`click`, `purchase`, ...).
    pub action: Cow<'a, str>,
}

/// One raw id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id<'a> {
    /// A string id (a BYTES feature's id).
    Str(Cow<'a, str>),
    /// An integer id (an INT64 feature's id).
    Int(i64),
}

/// A feature's value in an impression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureValue<'a> {
    /// One id.
    One(Id<'a>),
    /// Several ids (multi-hot), in order.
    Many(Vec<Id<'a>>),
    /// `null`: no ids.
    Null,
}

impl<'a> FeatureValue<'a> {
    /// The ids, in order.
    pub fn ids(&self) -> &[Id<'a>] {
        match self {
            FeatureValue::One(id) => std::slice::from_ref(id),
            FeatureValue::Many(v) => v,
            FeatureValue::Null => &[],
        }
    }
}

/// Why an event was refused; each is a `reason` label of the malformed-event counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventErrorKind {
    /// Not JSON, or not an object.
    Json,
    /// A required field is missing.
    MissingField,
    /// A field has the wrong type (or an integer out of range).
    WrongType,
    /// `type` is neither `impression` nor `action`.
    UnknownType,
    /// `dense` does not have the model's dense width.
    DenseWidth,
}

impl EventErrorKind {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            EventErrorKind::Json => "json",
            EventErrorKind::MissingField => "missing_field",
            EventErrorKind::WrongType => "wrong_type",
            EventErrorKind::UnknownType => "unknown_type",
            EventErrorKind::DenseWidth => "dense_width",
        }
    }
}

/// A malformed event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.reason())]
pub struct EventError {
    /// Why, as a counter label.
    pub kind: EventErrorKind,
    /// What exactly, naming the field.
    pub message: String,
}

impl EventError {
    /// An error of `kind`.
    pub fn new(kind: EventErrorKind, message: impl Into<String>) -> Self {
        EventError {
            kind,
            message: message.into(),
        }
    }

    fn from_json(e: serde_json::Error) -> Self {
        let message = e.to_string();
        let kind = match e.classify() {
            serde_json::error::Category::Data if message.starts_with("missing field") => {
                EventErrorKind::MissingField
            }
            serde_json::error::Category::Data => EventErrorKind::WrongType,
            _ if message.starts_with("number out of range") => EventErrorKind::WrongType,
            _ => EventErrorKind::Json,
        };
        EventError { kind, message }
    }
}

impl From<EventError> for crate::Error {
    fn from(e: EventError) -> Self {
        crate::Error::Event(e.to_string())
    }
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    ts_ms: u64,
    #[serde(default, borrow)]
    features: Option<Features<'a>>,
    #[serde(default)]
    dense: Option<Vec<f32>>,
    #[serde(default, borrow)]
    action: Option<Cow<'a, str>>,
}

/// Reads one event from a JSON line (trailing whitespace allowed).
pub fn parse_line(line: &[u8]) -> Result<Event<'_>, EventError> {
    let raw: RawEvent<'_> = serde_json::from_slice(line).map_err(EventError::from_json)?;
    let missing =
        |f: &str| EventError::new(EventErrorKind::MissingField, format!("missing field `{f}`"));
    match &*raw.kind {
        "impression" => Ok(Event::Impression(Impression {
            id: raw.id,
            ts_ms: raw.ts_ms,
            features: raw.features.ok_or_else(|| missing("features"))?.0,
            dense: raw.dense,
        })),
        "action" => Ok(Event::Action(Action {
            id: raw.id,
            ts_ms: raw.ts_ms,
            action: raw.action.ok_or_else(|| missing("action"))?,
        })),
        other => Err(EventError::new(
            EventErrorKind::UnknownType,
            format!("type '{other}' is neither impression nor action"),
        )),
    }
}

/// `features`: the object's pairs in order, strings borrowed where possible.
struct Features<'a>(Vec<(Cow<'a, str>, FeatureValue<'a>)>);

/// A string, borrowed from the input when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

const EXPECTING: &str = "a string, an integer, or a list of them";

fn int<E: serde::de::Error>(v: u64) -> Result<i64, E> {
    i64::try_from(v).map_err(|_| {
        E::custom(format!(
            "invalid type: integer {v} is outside the INT64 range"
        ))
    })
}

impl<'de: 'a, 'a> Deserialize<'de> for Id<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Id<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Id::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Id::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Id::Str(Cow::Owned(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Id::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                int(v).map(Id::Int)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for FeatureValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FeatureValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTING)
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FeatureValue::One(Id::Str(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FeatureValue::One(Id::Str(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(FeatureValue::One(Id::Str(Cow::Owned(v))))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(FeatureValue::One(Id::Int(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                int(v).map(|i| FeatureValue::One(Id::Int(i)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(FeatureValue::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                let mut ids = Vec::with_capacity(s.size_hint().unwrap_or(4));
                while let Some(id) = s.next_element::<Id<'de>>()? {
                    ids.push(id);
                }
                Ok(FeatureValue::Many(ids))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Features<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Features<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of feature values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(16));
                while let Some(Str(k)) = m.next_key::<Str<'de>>()? {
                    // name the feature in type errors; syntax errors pass as they are
                    let v = m.next_value::<FeatureValue<'de>>().map_err(|e| {
                        let m = e.to_string();
                        if m.starts_with("invalid") {
                            A::Error::custom(format!("features.{k}: {m}"))
                        } else {
                            e
                        }
                    })?;
                    out.push((k, v));
                }
                Ok(Features(out))
            }
        }
        d.deserialize_map(V)
    }
}
