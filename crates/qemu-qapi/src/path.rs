//! Path queries: "does this QEMU have X?" in one string, in the spirit of
//! libvirt's `virQEMUQAPISchemaPathExists`.
//!
//! A path is components separated by `/`. The first names a command or an
//! event. Each next one steps from what the path has reached so far:
//!
//! | component | from | reaches |
//! |---|---|---|
//! | `arg-type` | a command or event | its argument object type |
//! | `ret-type` | a command | its return type |
//! | `NAME` | an object type, or a member of one | the member `NAME` (of the object, or of any of its variants, nested ones too) |
//! | `*NAME` | the same | the member `NAME`, if it is optional |
//! | `+CASE` | a union type, or a member of one | the variant type for the tag value `CASE` |
//! | `^VALUE` | an enum type, or a member of one | the enum value `VALUE` |
//! | `!JSONTYPE` | a builtin type, or a member of one | that builtin, if its JSON type is `JSONTYPE` (`string`, `int`, `number`, `boolean`, `null`, `object`, `array`, `value`) |
//! | `$FEATURE` | anything | the same thing, if it has the feature `FEATURE` |
//!
//! A member stands for its type wherever a type is needed, and arrays and
//! alternates are looked through: `NAME` after a member of type
//! `['BlockdevOptions']` finds `NAME` in `BlockdevOptions`, and after a
//! member of an alternate type in whichever of the alternate's types has it.
//! Where several things match (a member in several variants, the branches of
//! an alternate), each is tried in turn and the first that lets the rest of
//! the path match wins.
//!
//! `$FEATURE` checks what the component before it reached: after the command
//! name the command's features, after `NAME` the member's, after `^VALUE` the
//! enum value's, after `arg-type`, `ret-type` or `+CASE` the type's.
//!
//! Examples:
//!
//! - `query-status`: the command exists;
//! - `query-status/$deprecated`: it exists and is deprecated;
//! - `blockdev-add/arg-type/+file/aio/^io_uring`: `blockdev-add` takes a
//!   `file` driver whose `aio` member accepts `io_uring`;
//! - `blockdev-add/arg-type/+qcow2/discard-no-unref`: the qcow2 driver has
//!   that option;
//! - `object-add/arg-type/+memory-backend-file/mem-path/!string`;
//! - `blockdev-add/arg-type/*node-name`: `node-name` may be left out;
//! - `STOP`: the event exists.

use crate::model::{Featured, Member, Meta, SchemaInfo};
use crate::Schema;

/// What a path query reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Found<'a> {
    /// A command, an event or a type.
    Entity(&'a SchemaInfo),
    /// A member of the object type `owner` (one of its variants' members
    /// counts as the variant type's).
    Member {
        /// The object type that declares the member.
        owner: &'a SchemaInfo,
        /// The member.
        member: &'a Member,
    },
    /// A value of the enum type `owner`.
    EnumValue {
        /// The enum type.
        owner: &'a SchemaInfo,
        /// The value.
        value: &'a crate::model::EnumValue,
    },
}

impl<'a> Found<'a> {
    /// The features of what was found.
    pub fn features(&self) -> &'a [String] {
        match self {
            Found::Entity(e) => &e.features,
            Found::Member { member, .. } => &member.features,
            Found::EnumValue { value, .. } => &value.features,
        }
    }

    /// The entity found, if the path ended at one.
    pub fn entity(&self) -> Option<&'a SchemaInfo> {
        match self {
            Found::Entity(e) => Some(e),
            _ => None,
        }
    }

    /// The member found, if the path ended at one.
    pub fn member(&self) -> Option<&'a Member> {
        match self {
            Found::Member { member, .. } => Some(member),
            _ => None,
        }
    }
}

impl Featured for Found<'_> {
    fn features(&self) -> &[String] {
        Found::features(self)
    }
}

impl Schema {
    /// Follows `path` (see the [module documentation](crate::path) for the
    /// syntax) and returns what it reaches, or `None` if this schema does not
    /// have it. An empty path, or an empty component, reaches nothing.
    ///
    /// ```
    /// use qemu_qapi::{Featured, Schema};
    /// use serde_json::json;
    ///
    /// let schema = Schema::from_introspection(&json!([
    ///     {"name": "stop", "meta-type": "command", "arg-type": "0", "ret-type": "0"},
    ///     {"name": "0", "meta-type": "object", "members": []},
    ///     {"name": "x-go", "meta-type": "command", "arg-type": "1", "ret-type": "0",
    ///      "features": ["unstable"]},
    ///     {"name": "1", "meta-type": "object", "members": [
    ///         {"name": "speed", "type": "2", "default": null}]},
    ///     {"name": "2", "meta-type": "enum", "values": ["slow", "fast"]},
    /// ])).unwrap();
    /// assert!(schema.path_exists("stop"));
    /// assert!(schema.path_exists("x-go/$unstable"));
    /// assert!(schema.path_exists("x-go/arg-type/speed/^fast"));
    /// assert!(!schema.path_exists("x-go/arg-type/speed/^warp"));
    /// assert!(schema.query("x-go/arg-type/speed").unwrap().member().unwrap().is_optional());
    /// ```
    pub fn query(&self, path: &str) -> Option<Found<'_>> {
        let mut parts = path.split('/');
        let first = parts.next().filter(|s| !s.is_empty())?;
        let rest: Vec<&str> = parts.collect();
        let start = self.command(first).or_else(|| self.event(first))?;
        self.walk(Found::Entity(start), &rest)
    }

    /// True if [`Schema::query`] finds `path`.
    pub fn path_exists(&self, path: &str) -> bool {
        self.query(path).is_some()
    }

    fn walk<'a>(&'a self, at: Found<'a>, rest: &[&str]) -> Option<Found<'a>> {
        let Some((step, rest)) = rest.split_first() else {
            return Some(at);
        };
        self.step(at, step)
            .into_iter()
            .find_map(|next| self.walk(next, rest))
    }

    /// Everything `step` may reach from `at`.
    fn step<'a>(&'a self, at: Found<'a>, step: &str) -> Vec<Found<'a>> {
        if step.is_empty() {
            return Vec::new();
        }
        if let Some(feature) = step.strip_prefix('$') {
            return if at.has_feature(feature) {
                vec![at]
            } else {
                Vec::new()
            };
        }
        if let Found::Entity(e) = at {
            match (&e.meta, step) {
                (Meta::Command(c), "arg-type") => return self.entity_vec(&c.arg_type),
                (Meta::Command(c), "ret-type") => return self.entity_vec(&c.ret_type),
                (Meta::Event(ev), "arg-type") => return self.entity_vec(&ev.arg_type),
                (Meta::Command(_) | Meta::Event(_), _) => return Vec::new(),
                _ => {}
            }
        }
        let types = match at {
            Found::Entity(e) => self.concrete(e),
            Found::Member { member, .. } => self
                .get(&member.type_name)
                .map(|t| self.concrete(t))
                .unwrap_or_default(),
            Found::EnumValue { .. } => return Vec::new(),
        };
        let mut found = Vec::new();
        for t in types {
            if let Some(case) = step.strip_prefix('+') {
                if let Some(v) = t.as_object().and_then(|o| o.variant(case)) {
                    found.extend(self.get(&v.type_name).map(Found::Entity));
                }
            } else if let Some(value) = step.strip_prefix('^') {
                if let Some(v) = t.as_enum().and_then(|en| en.value(value)) {
                    found.push(Found::EnumValue { owner: t, value: v });
                }
            } else if let Some(json_type) = step.strip_prefix('!') {
                if t.as_builtin().is_some_and(|b| b.json_type == json_type) {
                    found.push(Found::Entity(t));
                }
            } else if let Some(name) = step.strip_prefix('*') {
                let mut members = Vec::new();
                self.members_named(t, name, &mut members);
                found.extend(
                    members
                        .into_iter()
                        .filter(|m| m.member().is_some_and(Member::is_optional)),
                );
            } else {
                self.members_named(t, step, &mut found);
            }
        }
        found
    }

    fn entity_vec(&self, name: &str) -> Vec<Found<'_>> {
        self.get(name).map(Found::Entity).into_iter().collect()
    }

    /// `t`, with arrays and alternates looked through: the types a value of
    /// `t` may have inside.
    fn concrete<'a>(&'a self, t: &'a SchemaInfo) -> Vec<&'a SchemaInfo> {
        let mut out = Vec::new();
        let mut todo = vec![t];
        // Bounded: a schema could (absurdly) have an array of itself.
        let mut budget = 64;
        while let Some(t) = todo.pop() {
            budget -= 1;
            if budget == 0 {
                break;
            }
            match &t.meta {
                Meta::Array(a) => todo.extend(self.get(&a.element_type)),
                Meta::Alternate(alt) => {
                    // Reversed, so that they are tried in the schema's order.
                    todo.extend(
                        alt.members
                            .iter()
                            .rev()
                            .filter_map(|m| self.get(&m.type_name)),
                    )
                }
                _ => out.push(t),
            }
        }
        out
    }

    /// The members `name` of object `t` and of its variants, recursively.
    fn members_named<'a>(&'a self, t: &'a SchemaInfo, name: &str, out: &mut Vec<Found<'a>>) {
        self.members_named_in(t, name, out, 8);
    }

    fn members_named_in<'a>(
        &'a self,
        t: &'a SchemaInfo,
        name: &str,
        out: &mut Vec<Found<'a>>,
        depth: u32,
    ) {
        let Some(obj) = t.as_object() else { return };
        if let Some(m) = obj.member(name) {
            out.push(Found::Member {
                owner: t,
                member: m,
            });
        }
        if depth == 0 {
            return;
        }
        for v in &obj.variants {
            if let Some(vt) = self.get(&v.type_name) {
                self.members_named_in(vt, name, out, depth - 1);
            }
        }
    }
}
