//! Inode numbers for the paths of the tree, and what each path is.

use std::collections::HashMap;

use fuser::{FileType, INodeNo};

/// What a path of the file system is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An object (the root, or a `child<>` property): a directory.
    Object,
    /// A `link<>` property: a symbolic link to the object it points to.
    Link,
    /// Any other property: a file holding its value. The QOM type is kept for
    /// writes, which convert the text to it.
    Property {
        /// The QOM type (`bool`, `uint32`, `string`, ...).
        type_: String,
    },
}

impl Kind {
    /// The kind of an entry of `qom-list` with type `type_`.
    pub(crate) fn of(type_: &str) -> Kind {
        if type_.starts_with("child<") {
            Kind::Object
        } else if type_.starts_with("link<") {
            Kind::Link
        } else {
            Kind::Property {
                type_: type_.to_owned(),
            }
        }
    }

    pub(crate) fn file_type(&self) -> FileType {
        match self {
            Kind::Object => FileType::Directory,
            Kind::Link => FileType::Symlink,
            Kind::Property { .. } => FileType::RegularFile,
        }
    }
}

/// One path: `/machine/peripheral` (an object), `/machine/type` (property `type`
/// of `/machine`).
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// The path in the file system, which for an object is its QOM path.
    pub(crate) path: String,
    /// The object the entry belongs to (`None` for the root).
    pub(crate) parent: Option<String>,
    /// The entry's name in its parent (the property name).
    pub(crate) name: String,
    pub(crate) kind: Kind,
}

/// Paths and their inode numbers, both ways. Numbers are never reused while
/// mounted: a path that comes back (a device unplugged and plugged again) gets its
/// old number. The table only grows, by the distinct paths looked at (a few
/// thousand for a `pc` machine).
#[derive(Debug)]
pub(crate) struct Inodes {
    by_path: HashMap<String, u64>,
    nodes: Vec<Node>,
}

impl Inodes {
    pub(crate) fn new() -> Inodes {
        let root = Node {
            path: "/".to_owned(),
            parent: None,
            name: String::new(),
            kind: Kind::Object,
        };
        Inodes {
            by_path: HashMap::from([("/".to_owned(), INodeNo::ROOT.0)]),
            nodes: vec![root],
        }
    }

    /// The node of inode `ino`.
    pub(crate) fn get(&self, ino: INodeNo) -> Option<&Node> {
        let i = usize::try_from(ino.0.checked_sub(1)?).ok()?;
        self.nodes.get(i)
    }

    /// The inode of `path`, if it has one.
    pub(crate) fn lookup_path(&self, path: &str) -> Option<INodeNo> {
        self.by_path.get(path).map(|&i| INodeNo(i))
    }

    /// The inode of entry `name` of object `parent`, of kind `kind` (updated if the
    /// path now is something else).
    pub(crate) fn intern(&mut self, parent: &str, name: &str, kind: Kind) -> INodeNo {
        let path = child_path(parent, name);
        if let Some(&ino) = self.by_path.get(&path) {
            if let Some(node) = self.nodes.get_mut((ino - 1) as usize) {
                node.kind = kind;
            }
            return INodeNo(ino);
        }
        self.nodes.push(Node {
            path: path.clone(),
            parent: Some(parent.to_owned()),
            name: name.to_owned(),
            kind,
        });
        let ino = self.nodes.len() as u64;
        self.by_path.insert(path, ino);
        INodeNo(ino)
    }
}

/// The path of entry `name` of object `parent`.
pub(crate) fn child_path(parent: &str, name: &str) -> String {
    crate::qom::child_path(parent, name)
}

/// How many objects deep `path` is (`/` 0, `/machine` 1, `/machine/unattached` 2).
pub(crate) fn depth(path: &str) -> usize {
    path.split('/').filter(|c| !c.is_empty()).count()
}

/// What `readlink` gives for a link property of object `parent` pointing at
/// `target` (an absolute QOM path): the target relative to the link's directory,
/// so that it resolves inside the mount (Python: `'../' * depth + target`).
pub(crate) fn link_target(parent: &str, target: &str) -> String {
    let mut s = "../".repeat(depth(parent));
    s.push_str(target.trim_start_matches('/'));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_get_stable_numbers() {
        let mut t = Inodes::new();
        assert_eq!(t.get(INodeNo::ROOT).unwrap().path, "/");
        let m = t.intern("/", "machine", Kind::Object);
        let ty = t.intern("/machine", "type", Kind::of("string"));
        assert_ne!(m, ty);
        assert_eq!(t.intern("/", "machine", Kind::Object), m);
        let n = t.get(ty).unwrap();
        assert_eq!(n.path, "/machine/type");
        assert_eq!(n.parent.as_deref(), Some("/machine"));
        assert_eq!(n.name, "type");
        assert!(t.get(INodeNo(0)).is_none());
        assert!(t.get(INodeNo(99)).is_none());
        // A property that became an object.
        t.intern("/machine", "type", Kind::Object);
        assert_eq!(t.get(ty).unwrap().kind, Kind::Object);
    }

    #[test]
    fn kinds_and_links() {
        assert_eq!(Kind::of("child<pc-i440fx-machine>"), Kind::Object);
        assert_eq!(Kind::of("link<qemu:memory-region>"), Kind::Link);
        assert_eq!(Kind::of("bool").file_type(), FileType::RegularFile);
        assert_eq!(depth("/"), 0);
        assert_eq!(depth("/machine/unattached"), 2);
        assert_eq!(
            link_target(
                "/machine/unattached/device[0]",
                "/machine/unattached/sysbus"
            ),
            "../../../machine/unattached/sysbus"
        );
        assert_eq!(link_target("/", "/machine"), "machine");
    }
}
