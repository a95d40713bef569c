//! A QEMU binary's schema and version as recorded in a file: what the
//! `qapi-schema dump` writes (`--into crates/qemu-qapi/schemas/`).
//!
//! The file is JSON, laid out to diff well: one line each for the binary and
//! its `query-version` return, then `query-qmp-schema`'s return one entity
//! per line, in QEMU's order (the keys of each object sorted):
//!
//! ```text
//! {
//! "binary": "qemu-system-x86_64",
//! "version": {"package":"Debian 1:7.2+dfsg-7+deb12u18+b3","qemu":{"major":7,"micro":22,"minor":2}},
//! "schema": [
//! {"arg-type":"0","meta-type":"command","name":"query-status","ret-type":"1"},
//! ...
//! ]
//! }
//! ```
//!
//! Its name is `<binary>-<major>.<minor>.<micro>.json`
//! ([`Recording::file_name`]).

use std::path::Path;

use serde_json::Value;

use crate::{FetchError, QemuVersion, Schema, SchemaError};

/// What one QEMU binary said about itself: its kind, its `query-version`
/// return and its `query-qmp-schema` return, verbatim.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    /// Which program: `qemu-system-x86_64`, `qemu-storage-daemon`, ...
    pub binary: String,
    /// `query-version`'s return.
    pub version: Value,
    /// `query-qmp-schema`'s return.
    pub schema: Value,
}

impl Recording {
    /// Asks a connected QEMU for `query-version` and `query-qmp-schema`;
    /// `binary` says which program it is (it is only recorded).
    pub async fn fetch(client: &qemu_qmp::Client, binary: &str) -> Result<Recording, FetchError> {
        let version = client
            .execute("query-version", None)
            .await
            .map_err(failed("query-version"))?;
        let schema = client
            .execute("query-qmp-schema", None)
            .await
            .map_err(failed("query-qmp-schema"))?;
        Recording::from_replies(binary, version, schema)
    }

    /// [`Recording::fetch`] through a blocking client (its command timeout
    /// applies).
    pub fn fetch_blocking(
        client: &qemu_qmp::blocking::Client,
        binary: &str,
    ) -> Result<Recording, FetchError> {
        let version = client
            .execute("query-version", None)
            .map_err(failed("query-version"))?;
        let schema = client
            .execute("query-qmp-schema", None)
            .map_err(failed("query-qmp-schema"))?;
        Recording::from_replies(binary, version, schema)
    }

    /// The recording of the two replies; fails here, not when the recording
    /// is used, if the version cannot be read.
    fn from_replies(binary: &str, version: Value, schema: Value) -> Result<Recording, FetchError> {
        QemuVersion::from_query_version(&version)?;
        Ok(Recording {
            binary: binary.to_owned(),
            version,
            schema,
        })
    }

    /// The recorded version.
    pub fn qemu_version(&self) -> Result<QemuVersion, SchemaError> {
        QemuVersion::from_query_version(&self.version)
    }

    /// The recorded schema, parsed, with its version.
    pub fn schema(&self) -> Result<Schema, SchemaError> {
        Ok(Schema::from_introspection(&self.schema)?.with_version(self.qemu_version()?))
    }

    /// `<binary>-<major>.<minor>.<micro>.json`, e.g.
    /// `qemu-system-x86_64-10.0.2.json`.
    pub fn file_name(&self) -> Result<String, SchemaError> {
        Ok(format!("{}-{}.json", self.binary, self.qemu_version()?))
    }

    /// The file's text (see the [module documentation](self)).
    pub fn to_json(&self) -> String {
        let compact = |v: &Value| serde_json::to_string(v).expect("JSON values serialize");
        let mut out = String::from("{\n");
        out += &format!(
            "\"binary\": {},\n",
            compact(&Value::from(self.binary.as_str()))
        );
        out += &format!("\"version\": {},\n", compact(&self.version));
        match &self.schema {
            Value::Array(entities) if !entities.is_empty() => {
                out += "\"schema\": [\n";
                let lines: Vec<String> = entities.iter().map(compact).collect();
                out += &lines.join(",\n");
                out += "\n]\n";
            }
            other => out += &format!("\"schema\": {}\n", compact(other)),
        }
        out += "}\n";
        out
    }

    /// Reads a file's text.
    pub fn from_json(text: &str) -> Result<Recording, SchemaError> {
        let mut v: Value =
            serde_json::from_str(text).map_err(|e| SchemaError::Recording(e.to_string()))?;
        let mut take = |key: &str| {
            v.get_mut(key)
                .map(Value::take)
                .ok_or_else(|| SchemaError::Recording(format!("no {key:?}")))
        };
        let binary = match take("binary")? {
            Value::String(s) => s,
            other => {
                return Err(SchemaError::Recording(format!(
                    "\"binary\" is not a string: {other}"
                )))
            }
        };
        Ok(Recording {
            binary,
            version: take("version")?,
            schema: take("schema")?,
        })
    }

    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<Recording, SchemaError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SchemaError::Recording(format!("{}: {e}", path.display())))?;
        Recording::from_json(&text)
    }
}

/// The [`FetchError`] of a failed `command`.
fn failed(command: &'static str) -> impl FnOnce(qemu_qmp::Error) -> FetchError {
    move |source| FetchError::Qmp { command, source }
}
