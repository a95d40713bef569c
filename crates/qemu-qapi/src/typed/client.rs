//! [`TypedClient`]: typed calls checked against the live schema.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::OnceCell;

use super::{Command, FromEvent, TypedListener};
use crate::{CheckError, FetchError, QemuVersion, Schema};

/// Why a typed call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The connected QEMU's schema refuses the call: it lacks the command or
    /// a member, or a value does not fit. Nothing was sent.
    #[error("{error} (QEMU {})", version.as_ref().map(ToString::to_string).unwrap_or_else(|| "of unknown version".into()))]
    Unsupported {
        /// The QEMU's version, when its schema came with one.
        version: Option<QemuVersion>,
        /// What is wrong, with the command and the member's path.
        error: Box<CheckError>,
    },
    /// The command failed, or the connection did.
    #[error(transparent)]
    Qmp(#[from] qemu_qmp::Error),
    /// The arguments could not be made JSON (a map with non-string keys in
    /// an `any` member, say).
    #[error("{command}: arguments: {source}")]
    Encode {
        /// The command.
        command: &'static str,
        /// What went wrong.
        source: serde_json::Error,
    },
    /// QEMU's return does not fit the command's return type.
    #[error("{command}: the return does not fit its type: {source}")]
    Decode {
        /// The command.
        command: &'static str,
        /// What did not fit.
        source: serde_json::Error,
        /// The return, as received.
        value: Value,
    },
    /// The schema could not be fetched.
    #[error("fetching the schema: {0}")]
    Schema(#[from] FetchError),
}

impl CallError {
    /// The underlying QMP error, looking through a schema fetch that failed.
    pub fn qmp_error(&self) -> Option<&qemu_qmp::Error> {
        match self {
            CallError::Qmp(e) => Some(e),
            CallError::Schema(FetchError::Qmp { source, .. }) => Some(source),
            _ => None,
        }
    }

    /// The QMP error class (`GenericError`, `DeviceNotFound`, ...) if QEMU
    /// answered with an error.
    pub fn error_class(&self) -> Option<&str> {
        self.qmp_error()?.error_class()
    }

    /// QEMU's error reply, if it answered with one.
    pub fn as_execute_error(&self) -> Option<&qemu_qmp::ExecuteError> {
        self.qmp_error()?.as_execute_error()
    }

    /// True if the call was refused locally by the version gate.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, CallError::Unsupported { .. })
    }

    /// True if the connection is gone (see [`qemu_qmp::Error::is_disconnected`]).
    pub fn is_disconnected(&self) -> bool {
        self.qmp_error()
            .is_some_and(qemu_qmp::Error::is_disconnected)
    }

    /// True if a wait ran out.
    pub fn is_timeout(&self) -> bool {
        self.qmp_error().is_some_and(qemu_qmp::Error::is_timeout)
    }
}

/// A [`qemu_qmp::Client`] that makes typed calls, each checked against the
/// connected QEMU's schema before it is sent.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use qemu_qapi::typed::TypedClient;
///
/// let client = qemu_qmp::Client::connect("/run/qemu/qmp.sock").await?;
/// let qmp = TypedClient::new(client);
/// // With the generated types: `qmp.call(QueryStatus::new()).await?.running`.
/// let version = qmp.schema().await?.version().cloned();
/// # Ok(()) }
/// ```
///
/// The schema is fetched on the first typed call (or [`TypedClient::schema`])
/// and kept for the connection. Hand-written JSON remains available through
/// [`TypedClient::client`].
#[derive(Clone)]
pub struct TypedClient {
    client: qemu_qmp::Client,
    schema: Arc<OnceCell<Arc<Schema>>>,
}

impl TypedClient {
    /// Wraps a connected client.
    pub fn new(client: qemu_qmp::Client) -> TypedClient {
        TypedClient {
            client,
            schema: Arc::new(OnceCell::new()),
        }
    }

    /// Wraps a connected client whose schema is already known (fetched
    /// before, or a recording of the same QEMU binary).
    pub fn with_schema(client: qemu_qmp::Client, schema: Arc<Schema>) -> TypedClient {
        TypedClient {
            client,
            schema: Arc::new(OnceCell::new_with(Some(schema))),
        }
    }

    /// The client, for everything untyped.
    pub fn client(&self) -> &qemu_qmp::Client {
        &self.client
    }

    /// The connected QEMU's schema, fetched on first use.
    pub async fn schema(&self) -> Result<&Arc<Schema>, FetchError> {
        self.schema
            .get_or_try_init(|| async { Schema::fetch(&self.client).await.map(Arc::new) })
            .await
    }

    /// Runs `command` and decodes what it returns, after checking it
    /// against the connected QEMU's schema ([`CallError::Unsupported`]).
    pub async fn call<C: Command>(&self, command: C) -> Result<C::Returns, CallError> {
        let arguments = encode(&command)?;
        let schema = self.schema().await?;
        check(schema, C::NAME, arguments.as_ref())?;
        self.send::<C>(arguments).await
    }

    /// Runs `command` without the schema check: for a QEMU whose schema
    /// cannot be asked, or a command you know better about.
    pub async fn call_unchecked<C: Command>(&self, command: C) -> Result<C::Returns, CallError> {
        let arguments = encode(&command)?;
        self.send::<C>(arguments).await
    }

    async fn send<C: Command>(&self, arguments: Option<Value>) -> Result<C::Returns, CallError> {
        let value = self.client.execute(C::NAME, arguments).await?;
        decode::<C>(value)
    }

    /// Hand-written JSON, checked against the connected QEMU's schema
    /// before it is sent (the opt-in check of untyped commands): a command
    /// QEMU lacks or wrong arguments fail locally with
    /// [`CallError::Unsupported`], with the path of the problem and a
    /// "did you mean" for unknown names
    /// (`blockdev-add: arguments.node-name: expected string, got integer`).
    /// Otherwise the same as [`qemu_qmp::Client::execute`].
    pub async fn execute(&self, name: &str, arguments: Option<Value>) -> Result<Value, CallError> {
        check(self.schema().await?, name, arguments.as_ref())?;
        Ok(self.client.execute(name, arguments).await?)
    }

    /// Checks `command` against the connected QEMU's schema without
    /// sending it.
    pub async fn check<C: Command>(&self, command: &C) -> Result<(), CallError> {
        let arguments = encode(command)?;
        check(self.schema().await?, C::NAME, arguments.as_ref())
    }

    /// A listener for events decoded as `E`: one event's data type (only
    /// that event is received) or the generated `Event` enum (every event).
    pub fn listen<E: FromEvent>(&self) -> TypedListener<E> {
        let inner = match E::names() {
            Some(names) => self.client.listen(names.iter().copied()),
            None => self.client.listen_all(),
        };
        TypedListener::new(inner)
    }
}

/// The arguments as JSON; `None` for `{}` (QEMU takes no `arguments` the same
/// as empty ones).
pub(crate) fn encode<C: Command>(command: &C) -> Result<Option<Value>, CallError> {
    match serde_json::to_value(command) {
        Ok(Value::Object(m)) if m.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(source) => Err(CallError::Encode {
            command: C::NAME,
            source,
        }),
    }
}

/// The version gate.
pub(crate) fn check(
    schema: &Schema,
    name: &str,
    arguments: Option<&Value>,
) -> Result<(), CallError> {
    schema
        .check(name, arguments)
        .map_err(|error| CallError::Unsupported {
            version: schema.version().cloned(),
            error: Box::new(error),
        })
}

/// The return, decoded.
pub(crate) fn decode<C: Command>(value: Value) -> Result<C::Returns, CallError> {
    match serde::Deserialize::deserialize(&value) {
        Ok(r) => Ok(r),
        Err(source) => Err(CallError::Decode {
            command: C::NAME,
            source,
            value,
        }),
    }
}
