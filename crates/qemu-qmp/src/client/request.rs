//! The request builder ([`Request`], from [`Client::request`]), and turning a reply
//! into the caller's terms.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use serde_json::Value;

use super::Client;
use crate::error::{Error, ExecuteError, ProtocolError, Result};
use crate::framing::JsonObject;
use crate::json::Ordered;
use crate::message::{self, request_command, Response};
use crate::transport::dup_fd;

/// A command being built; see [`Client::request`].
#[must_use = "a request does nothing until sent"]
pub struct Request<'a> {
    client: &'a Client,
    command: String,
    arguments: Option<Value>,
    oob: bool,
    timeout: Option<Duration>,
    fds: Vec<OwnedFd>,
    fd_error: Option<io::Error>,
}

impl<'a> Request<'a> {
    /// A command with the client's default timeout and nothing else.
    pub(super) fn new(client: &'a Client, command: &str) -> Self {
        Request {
            client,
            command: command.to_owned(),
            arguments: None,
            oob: false,
            timeout: client.inner.config.command_timeout,
            fds: Vec::new(),
            fd_error: None,
        }
    }

    /// Set all arguments at once (a JSON object).
    pub fn arguments(mut self, arguments: Value) -> Self {
        self.arguments = Some(arguments);
        self
    }

    /// Set the arguments if given.
    pub fn arguments_opt(mut self, arguments: Option<Value>) -> Self {
        self.arguments = arguments;
        self
    }

    /// Add one argument.
    pub fn arg(mut self, key: &str, value: impl Into<Value>) -> Self {
        match &mut self.arguments {
            Some(Value::Object(m)) => {
                m.insert(key.to_owned(), value.into());
            }
            _ => {
                let mut m = JsonObject::new();
                m.insert(key.to_owned(), value.into());
                self.arguments = Some(Value::Object(m));
            }
        }
        self
    }

    /// Execute out of band (`exec-oob`).
    pub fn oob(mut self) -> Self {
        self.oob = true;
        self
    }

    /// Deadline for the reply (overrides the client's default).
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into();
        self
    }

    /// Send a file descriptor with the command (`SCM_RIGHTS`, Unix sockets only), for
    /// `getfd` and `add-fd`. The descriptor is duplicated; the caller keeps its own.
    pub fn fd(mut self, fd: impl AsFd) -> Self {
        match dup_fd(fd.as_fd()) {
            Ok(d) => self.fds.push(d),
            Err(e) => self.fd_error = Some(e),
        }
        self
    }

    /// Send and return the whole reply, error replies included. The id the library
    /// chose for the request, if it needed one, is removed from the reply, so the
    /// reply reads as QEMU's answer to the command as typed.
    ///
    /// With more file descriptors than one message can pass (253, the kernel's
    /// `SCM_MAX_FD`), fails with [`Error::TooManyFds`] before anything is sent; with
    /// descriptors the kernel refuses to pass, with [`Error::NotSent`]. Either way
    /// only this request fails: the session goes on.
    pub async fn send_raw(self) -> Result<Response> {
        let (_, mut reply) = self.exchange().await?;
        swap_id(&mut reply.raw, None);
        Ok(reply)
    }

    /// Send and return the `return` value; an error reply becomes [`Error::Execute`].
    /// Errors about descriptors as for [`send_raw`](Self::send_raw).
    pub async fn send(self) -> Result<Value> {
        let (sent, reply) = self.exchange().await?;
        sent.into_return(reply)
    }

    /// [`send`](Self::send), returning the `return` value with its members in the
    /// order the peer wrote them ([`Response::ordered`]): for showing it to a person.
    /// Exact on a client built with
    /// [`preserve_order(true)`](crate::ClientBuilder::preserve_order).
    pub async fn send_ordered(self) -> Result<Ordered> {
        let (sent, reply) = self.exchange().await?;
        let mut ordered = reply.ordered();
        sent.into_return(reply)?;
        Ok(ordered.remove("return").unwrap_or(Ordered::Null))
    }

    /// Send; what was sent and the reply (with the wire id, if the peer echoed one).
    async fn exchange(self) -> Result<(Sent, Response)> {
        if let Some(e) = self.fd_error {
            return Err(Error::system("duplicating a descriptor", e));
        }
        let session = self.client.session()?;
        let sent = Sent {
            command: self.command,
            arguments: self.arguments,
            oob: self.oob,
        };
        let encode =
            |id| message::encode_command(&sent.command, sent.arguments.as_ref(), sent.oob, id);
        let reply = session
            .call_command(&sent.command, sent.oob, encode, self.fds, self.timeout)
            .await?;
        Ok((sent, reply))
    }
}

/// A request as the builder sent it, kept in parts: the object is built only for an
/// error that shows it (measured: building, encoding and dropping the object cost
/// about 2,000 instructions per command, a sixth of the client's share).
struct Sent {
    command: String,
    arguments: Option<Value>,
    oob: bool,
}

impl Sent {
    /// The request as an object, as sent without its wire id.
    fn into_object(self) -> JsonObject {
        message::make_request(self.command, self.arguments, self.oob, None)
    }

    /// The `return` value of `reply`, or the matching error.
    fn into_return(self, mut reply: Response) -> Result<Value> {
        if !reply.raw.contains_key("error") {
            if let Some(v) = reply.raw.remove("return") {
                return Ok(v);
            }
        }
        swap_id(&mut reply.raw, None);
        into_return(self.into_object(), reply)
    }
}

/// Put `caller_id` where the library's wire id is in a request or reply, or remove
/// the wire id when the caller gave none. A message without an id (a peer that did
/// not echo one) is left as it is.
pub(super) fn swap_id(obj: &mut JsonObject, caller_id: Option<Value>) {
    if obj.remove("id").is_some() {
        if let Some(id) = caller_id {
            obj.insert("id".into(), id);
        }
    }
}

/// Turn a reply into the `return` value or the matching error.
pub(crate) fn into_return(sent: JsonObject, reply: Response) -> Result<Value> {
    let command = |sent: &JsonObject| request_command(sent).unwrap_or("").to_owned();
    match reply.error_info() {
        Ok(Some(error)) => Err(ExecuteError {
            error,
            sent,
            received: reply.raw,
        }
        .into()),
        Err(reason) => Err(ProtocolError::BadReply {
            command: command(&sent),
            reason,
            received: Box::new(reply.raw),
        }
        .into()),
        Ok(None) => {
            let mut raw = reply.raw;
            match raw.remove("return") {
                Some(v) => Ok(v),
                None => Err(ProtocolError::BadReply {
                    command: command(&sent),
                    reason: "the reply has neither 'return' nor 'error'".into(),
                    received: Box::new(raw),
                }
                .into()),
            }
        }
    }
}
