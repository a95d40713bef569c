//! The change model: which group, which part of a command or event, what
//! changed.

#[cfg(doc)]
use super::diff;

/// Which group of the report a change belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// A command added or removed, or its own features.
    Commands,
    /// An event added or removed, or its own features.
    Events,
    /// A change inside the arguments, return value or data of a command or
    /// event that both schemas have.
    Types,
}

impl Group {
    /// `commands`, `events` or `types`.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Commands => "commands",
            Group::Events => "events",
            Group::Types => "types",
        }
    }
}

/// Where in a command or event a change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// The command or event itself.
    Itself,
    /// A command's arguments.
    Arguments,
    /// An event's data.
    Data,
    /// A command's return value.
    Return,
}

impl Part {
    /// `""`, `arguments`, `data` or `return`.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Itself => "",
            Part::Arguments => "arguments",
            Part::Data => "data",
            Part::Return => "return",
        }
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    /// The command appeared.
    CommandAdded,
    /// The command went away.
    CommandRemoved,
    /// The event appeared.
    EventAdded,
    /// The event went away.
    EventRemoved,
    /// A member appeared in the object at the path.
    MemberAdded {
        /// Its name.
        name: String,
        /// Whether it may be left out.
        optional: bool,
    },
    /// A member of the object at the path went away.
    MemberRemoved {
        /// Its name.
        name: String,
    },
    /// The member at the path may now be left out.
    BecameOptional,
    /// The member at the path must now be given.
    BecameMandatory,
    /// The type at the path is another kind of type.
    TypeChanged {
        /// The old type, described (`string`, `enum`, `array of int`, ...).
        old: String,
        /// The new type, described.
        new: String,
    },
    /// The enum at the path has a new value.
    EnumValueAdded {
        /// The value.
        value: String,
    },
    /// The enum at the path lost a value.
    EnumValueRemoved {
        /// The value.
        value: String,
    },
    /// The union at the path has a variant for a new tag value.
    VariantAdded {
        /// The tag value.
        case: String,
    },
    /// The union at the path lost the variant for a tag value.
    VariantRemoved {
        /// The tag value.
        case: String,
    },
    /// The alternate at the path may now be of another type.
    BranchAdded {
        /// The branch's type, described.
        branch: String,
    },
    /// The alternate at the path may no longer be of a type.
    BranchRemoved {
        /// The branch's type, described.
        branch: String,
    },
    /// The command, event, member or type at the path has a new feature.
    FeatureAdded {
        /// `deprecated`, `unstable`, ...
        feature: String,
    },
    /// The command, event, member or type at the path lost a feature.
    FeatureRemoved {
        /// `deprecated`, `unstable`, ...
        feature: String,
    },
    /// A value of the enum at the path has a new feature.
    EnumValueFeatureAdded {
        /// The enum value.
        value: String,
        /// The feature.
        feature: String,
    },
    /// A value of the enum at the path lost a feature.
    EnumValueFeatureRemoved {
        /// The enum value.
        value: String,
        /// The feature.
        feature: String,
    },
}

impl ChangeKind {
    /// A short kebab-case name, as in the JSON output (`member-added`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            ChangeKind::CommandAdded => "command-added",
            ChangeKind::CommandRemoved => "command-removed",
            ChangeKind::EventAdded => "event-added",
            ChangeKind::EventRemoved => "event-removed",
            ChangeKind::MemberAdded { .. } => "member-added",
            ChangeKind::MemberRemoved { .. } => "member-removed",
            ChangeKind::BecameOptional => "became-optional",
            ChangeKind::BecameMandatory => "became-mandatory",
            ChangeKind::TypeChanged { .. } => "type-changed",
            ChangeKind::EnumValueAdded { .. } => "enum-value-added",
            ChangeKind::EnumValueRemoved { .. } => "enum-value-removed",
            ChangeKind::VariantAdded { .. } => "variant-added",
            ChangeKind::VariantRemoved { .. } => "variant-removed",
            ChangeKind::BranchAdded { .. } => "branch-added",
            ChangeKind::BranchRemoved { .. } => "branch-removed",
            ChangeKind::FeatureAdded { .. } => "feature-added",
            ChangeKind::FeatureRemoved { .. } => "feature-removed",
            ChangeKind::EnumValueFeatureAdded { .. } => "enum-value-feature-added",
            ChangeKind::EnumValueFeatureRemoved { .. } => "enum-value-feature-removed",
        }
    }
}

/// One change: in which command or event, in which part of it, at which
/// member path, what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Change {
    /// The group of the report.
    pub group: Group,
    /// The command or event.
    pub name: String,
    /// Its arguments, data or return value, or itself.
    pub part: Part,
    /// The member path from the part, `.`-separated; a variant is `+CASE`
    /// (`+file.aio`: the member `aio` of the variant `file`). Empty for the
    /// part itself.
    pub path: String,
    /// What changed.
    pub kind: ChangeKind,
}

/// The changes from one schema to another, sorted by group, command or
/// event name, part, path and change: see [`diff`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchemaDiff {
    /// Every change, sorted, without duplicates.
    pub changes: Vec<Change>,
}

impl SchemaDiff {
    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes of one group.
    pub fn group(&self, group: Group) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(move |c| c.group == group)
    }

    /// The report's lines ([`Change`]'s `Display`), without the group
    /// headings.
    pub fn lines(&self) -> Vec<String> {
        self.changes.iter().map(|c| c.to_string()).collect()
    }
}
