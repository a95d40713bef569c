//! What generated code calls; not for use by hand.

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::{Error as _, SerializeMap};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The impls of a generated enum: `as_str`, `From<&str>`, `FromStr`,
/// `Display`, and serde as a JSON string, unknown values kept in `Unknown`.
#[macro_export]
#[doc(hidden)]
macro_rules! qapi_enum {
    ($name:ident { $($(#[cfg($c:meta)])? $variant:ident = $wire:literal,)* }) => {
        impl $name {
            /// The value as on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $($(#[cfg($c)])? Self::$variant => $wire,)*
                    Self::Unknown(s) => s,
                }
            }
        }

        impl ::std::convert::From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($(#[cfg($c)])? $wire => Self::$variant,)*
                    other => Self::Unknown(other.to_owned()),
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::convert::Infallible;
            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                Ok(Self::from(s))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                Ok(Self::from(&*s))
            }
        }
    };
}

pub use crate::qapi_enum;

/// Writes a union's tag and its variant's members, into the map of the
/// union's struct (it is `#[serde(flatten)]`).
pub fn serialize_variant<S: Serializer, T: Serialize>(
    serializer: S,
    tag: &str,
    value: &str,
    data: Option<&T>,
) -> Result<S::Ok, S::Error> {
    let members = match data {
        Some(d) => match serde_json::to_value(d).map_err(S::Error::custom)? {
            Value::Object(m) => m,
            other => {
                return Err(S::Error::custom(format!(
                    "the members of {tag} {value:?} are not an object: {other}"
                )))
            }
        },
        None => Map::new(),
    };
    let mut map = serializer.serialize_map(None)?;
    if !value.is_empty() {
        map.serialize_entry(tag, value)?;
    }
    for (k, v) in &members {
        if k != tag {
            map.serialize_entry(k, v)?;
        }
    }
    map.end()
}

/// Reads a union's tag value and the members other than its struct's.
pub fn deserialize_variant<'de, D: Deserializer<'de>>(
    deserializer: D,
    tag: &str,
) -> Result<(String, Map<String, Value>), D::Error> {
    let mut members = Map::<String, Value>::deserialize(deserializer)?;
    match members.remove(tag) {
        Some(Value::String(s)) => Ok((s, members)),
        Some(other) => Err(D::Error::custom(format!(
            "{tag}: expected a string, got {other}"
        ))),
        // A union that was a struct in an older QEMU without the tag:
        // unknown, with all its members.
        None => Ok((String::new(), members)),
    }
}

/// Reads a variant's members.
pub fn from_members<T: DeserializeOwned, E: serde::de::Error>(
    members: Map<String, Value>,
) -> Result<T, E> {
    T::deserialize(Value::Object(members)).map_err(E::custom)
}

/// Reads an alternate's branch.
pub fn from_value<T: DeserializeOwned, E: serde::de::Error>(value: Value) -> Result<T, E> {
    T::deserialize(value).map_err(E::custom)
}

/// Reads an event's data (`{}` when it had none).
pub fn event_data<T: DeserializeOwned>(data: Option<&Value>) -> Result<T, serde_json::Error> {
    match data {
        Some(v) => T::deserialize(v),
        None => T::deserialize(&Value::Object(Map::new())),
    }
}

/// Reads the data of the event `name`, which must be `T`'s.
pub fn event_as<T: crate::typed::EventData>(
    name: &str,
    data: Option<&Value>,
) -> Result<T, serde_json::Error> {
    if name != T::NAME {
        return Err(<serde_json::Error as serde::de::Error>::custom(format!(
            "expected the event {}, got {name}",
            T::NAME
        )));
    }
    event_data(data)
}

/// Reads `value` as a `T` and writes it back (for tests of generated types).
pub fn roundtrip<T: DeserializeOwned + Serialize>(
    value: Value,
) -> Result<Value, serde_json::Error> {
    let t = T::deserialize(value)?;
    serde_json::to_value(&t)
}

/// Reads an optional member whose type has `null` as a value: present,
/// even as `null`, is `Some` (absence is `None`, from `#[serde(default)]`).
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}
