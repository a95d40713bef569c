//! The entities of `query-qmp-schema`'s return (QEMU's `SchemaInfo`), as Rust
//! data, and their parsing.
//!
//! Parsing is lenient where QEMU may grow: an unknown `meta-type` becomes
//! [`Meta::Unknown`], unknown fields are ignored, and optional fields that a
//! QEMU version lacks take their documented defaults. It is strict where a
//! client would otherwise misread the schema: a missing `name`, or a known
//! meta-type without its required fields, is an error.

use serde::Deserialize;
use serde_json::Value;

/// Something that carries QAPI features (`deprecated`, `unstable`, ...):
/// entities, object members and enum values.
pub trait Featured {
    /// The feature names, in no particular order.
    fn features(&self) -> &[String];

    /// True if the feature `name` is set.
    fn has_feature(&self, name: &str) -> bool {
        self.features().iter().any(|f| f == name)
    }

    /// True if the `deprecated` feature is set.
    fn is_deprecated(&self) -> bool {
        self.has_feature("deprecated")
    }

    /// True if the `unstable` feature is set (QEMU's `x-` names carry it since
    /// 6.0).
    fn is_unstable(&self) -> bool {
        self.has_feature("unstable")
    }
}

/// One entity of the schema: a command, an event or a type.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaInfo {
    /// The name: a command or event name (part of the wire ABI), a builtin
    /// type name (`str`, `int`, ...), or for other types a name that means
    /// nothing and changes between builds (`"123"`).
    pub name: String,
    /// Features of the entity.
    pub features: Vec<String>,
    /// What kind of entity it is, with what that kind has.
    pub meta: Meta,
}

impl Featured for SchemaInfo {
    fn features(&self) -> &[String] {
        &self.features
    }
}

impl SchemaInfo {
    /// The `meta-type` as QEMU spells it (`"command"`, `"object"`, ...), or
    /// the unknown one it sent.
    pub fn meta_type(&self) -> &str {
        match &self.meta {
            Meta::Builtin(_) => "builtin",
            Meta::Enum(_) => "enum",
            Meta::Array(_) => "array",
            Meta::Object(_) => "object",
            Meta::Alternate(_) => "alternate",
            Meta::Command(_) => "command",
            Meta::Event(_) => "event",
            Meta::Unknown(t) => t,
        }
    }

    /// The command part, if this is a command.
    pub fn as_command(&self) -> Option<&CommandType> {
        match &self.meta {
            Meta::Command(c) => Some(c),
            _ => None,
        }
    }

    /// The event part, if this is an event.
    pub fn as_event(&self) -> Option<&EventType> {
        match &self.meta {
            Meta::Event(e) => Some(e),
            _ => None,
        }
    }

    /// The object part, if this is an object type (struct or union).
    pub fn as_object(&self) -> Option<&ObjectType> {
        match &self.meta {
            Meta::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The enum part, if this is an enum type.
    pub fn as_enum(&self) -> Option<&EnumType> {
        match &self.meta {
            Meta::Enum(e) => Some(e),
            _ => None,
        }
    }

    /// The builtin part, if this is a builtin type.
    pub fn as_builtin(&self) -> Option<&BuiltinType> {
        match &self.meta {
            Meta::Builtin(b) => Some(b),
            _ => None,
        }
    }

    /// The array part, if this is an array type.
    pub fn as_array(&self) -> Option<&ArrayType> {
        match &self.meta {
            Meta::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The alternate part, if this is an alternate type.
    pub fn as_alternate(&self) -> Option<&AlternateType> {
        match &self.meta {
            Meta::Alternate(a) => Some(a),
            _ => None,
        }
    }
}

/// The meta-type of an entity and what it has.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    /// A predefined type (`str`, `int`, `bool`, `any`, ...).
    Builtin(BuiltinType),
    /// An enumeration.
    Enum(EnumType),
    /// An array.
    Array(ArrayType),
    /// An object: a struct, or a union with a tag and variants.
    Object(ObjectType),
    /// An alternate: one of several types, told apart by their JSON type.
    Alternate(AlternateType),
    /// A command.
    Command(CommandType),
    /// An event.
    Event(EventType),
    /// A meta-type this crate does not know (a newer QEMU): its name.
    Unknown(String),
}

/// A builtin type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BuiltinType {
    /// The JSON type on the wire: `string`, `number`, `int`, `boolean`,
    /// `null`, `object`, `array` or `value` (anything).
    #[serde(rename = "json-type")]
    pub json_type: String,
}

/// An enum type.
#[derive(Debug, Clone, PartialEq)]
pub struct EnumType {
    /// The values, with their features (QEMU 6.2 on; before, from `values`
    /// and without features).
    pub members: Vec<EnumValue>,
}

impl EnumType {
    /// The value `name`, if the enum has it.
    pub fn value(&self, name: &str) -> Option<&EnumValue> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The value names.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|m| m.name.as_str())
    }
}

/// One value of an enum.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EnumValue {
    /// The value as sent on the wire.
    pub name: String,
    /// Its features.
    #[serde(default)]
    pub features: Vec<String>,
}

impl Featured for EnumValue {
    fn features(&self) -> &[String] {
        &self.features
    }
}

/// An array type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ArrayType {
    /// The name of the element type.
    #[serde(rename = "element-type")]
    pub element_type: String,
}

/// An object type: a struct, or a union (with [`ObjectType::tag`] and
/// [`ObjectType::variants`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ObjectType {
    /// The members every value has (for a union: its base, with the tag).
    pub members: Vec<Member>,
    /// For a union, the name of the member whose value picks the variant.
    #[serde(default)]
    pub tag: Option<String>,
    /// For a union, the variant for each tag value.
    #[serde(default)]
    pub variants: Vec<Variant>,
}

impl ObjectType {
    /// The non-variant member `name`.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The variant for the tag value `case`.
    pub fn variant(&self, case: &str) -> Option<&Variant> {
        self.variants.iter().find(|v| v.case == case)
    }
}

/// A member of an object type (or a parameter of a command or event).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Member {
    /// The member name, as on the wire.
    pub name: String,
    /// The name of its type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Present (and `null`) when the member is optional.
    #[serde(default, deserialize_with = "present")]
    pub default: Option<Value>,
    /// Its features.
    #[serde(default)]
    pub features: Vec<String>,
}

impl Member {
    /// True if the member may be left out.
    pub fn is_optional(&self) -> bool {
        self.default.is_some()
    }
}

impl Featured for Member {
    fn features(&self) -> &[String] {
        &self.features
    }
}

/// `"default": null` must read as present, which `Option<Value>` alone would
/// not do.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A variant of a union: the members added when the tag has one value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Variant {
    /// The tag value.
    pub case: String,
    /// The name of the object type with the variant's members.
    #[serde(rename = "type")]
    pub type_name: String,
}

/// An alternate type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AlternateType {
    /// The types it may be.
    pub members: Vec<AlternateMember>,
}

/// One type an alternate may be.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AlternateMember {
    /// The name of the type.
    #[serde(rename = "type")]
    pub type_name: String,
}

/// A command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CommandType {
    /// The name of the object type of its arguments.
    #[serde(rename = "arg-type")]
    pub arg_type: String,
    /// The name of the type of its return value.
    #[serde(rename = "ret-type")]
    pub ret_type: String,
    /// Whether it may run out of band (`exec-oob`).
    #[serde(rename = "allow-oob", default)]
    pub allow_oob: bool,
}

/// An event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventType {
    /// The name of the object type of its `data`.
    #[serde(rename = "arg-type")]
    pub arg_type: String,
}

/// What an enum looks like on the wire: `members` since QEMU 6.2, `values`
/// (deprecated) always.
#[derive(Deserialize)]
struct RawEnum {
    #[serde(default)]
    members: Option<Vec<EnumValue>>,
    #[serde(default)]
    values: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawHeader {
    name: String,
    #[serde(rename = "meta-type")]
    meta_type: String,
    #[serde(default)]
    features: Vec<String>,
}

impl SchemaInfo {
    /// Parses one element of `query-qmp-schema`'s return.
    pub fn from_value(value: &Value) -> Result<SchemaInfo, serde_json::Error> {
        let header = RawHeader::deserialize(value)?;
        let meta = match header.meta_type.as_str() {
            "builtin" => Meta::Builtin(BuiltinType::deserialize(value)?),
            "enum" => {
                let raw = RawEnum::deserialize(value)?;
                let members = match (raw.members, raw.values) {
                    (Some(members), _) => members,
                    (None, Some(values)) => values
                        .into_iter()
                        .map(|name| EnumValue {
                            name,
                            features: Vec::new(),
                        })
                        .collect(),
                    (None, None) => {
                        return Err(serde::de::Error::missing_field("members"));
                    }
                };
                Meta::Enum(EnumType { members })
            }
            "array" => Meta::Array(ArrayType::deserialize(value)?),
            "object" => Meta::Object(ObjectType::deserialize(value)?),
            "alternate" => Meta::Alternate(AlternateType::deserialize(value)?),
            "command" => Meta::Command(CommandType::deserialize(value)?),
            "event" => Meta::Event(EventType::deserialize(value)?),
            _ => Meta::Unknown(header.meta_type),
        };
        Ok(SchemaInfo {
            name: header.name,
            features: header.features,
            meta,
        })
    }
}
