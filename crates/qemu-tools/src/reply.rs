//! Commands whose result is shown to a person: the `return` value in the order QEMU
//! wrote its members ([`Response::ordered`](qemu_qmp::Response::ordered)), as QEMU's
//! Python tools show it.

use std::time::Duration;

use qemu_qmp::json::Ordered;
use qemu_qmp::{Client, ExecuteError, JsonObject, ProtocolError, Value};

/// Execute `command` and return its `return` value in QEMU's order: exact when
/// `client` was built with [`preserve_order`](qemu_qmp::ClientBuilder::preserve_order).
/// Errors as [`Client::execute`] gives them (an error reply is
/// [`Error::Execute`](qemu_qmp::Error::Execute)). `timeout` overrides the client's
/// default deadline.
pub(crate) async fn execute_ordered(
    client: &Client,
    command: &str,
    arguments: Option<Value>,
    timeout: Option<Duration>,
) -> qemu_qmp::Result<Ordered> {
    let mut request = client.request(command).arguments_opt(arguments.clone());
    if let Some(t) = timeout {
        request = request.timeout(t);
    }
    let reply = request.send_raw().await?;
    let bad_reply = |reason: String, received: JsonObject| -> qemu_qmp::Error {
        ProtocolError::BadReply {
            command: command.to_owned(),
            reason,
            received: Box::new(received),
        }
        .into()
    };
    match reply.error_info() {
        Ok(Some(error)) => {
            let mut sent = JsonObject::new();
            sent.insert("execute".into(), Value::String(command.to_owned()));
            if let Some(a) = arguments {
                sent.insert("arguments".into(), a);
            }
            Err(ExecuteError {
                error,
                sent,
                received: reply.raw,
            }
            .into())
        }
        Err(reason) => Err(bad_reply(reason, reply.raw)),
        Ok(None) => match reply.ordered().remove("return") {
            Some(v) => Ok(v),
            None => Err(bad_reply(
                "the reply has neither 'return' nor 'error'".into(),
                reply.raw,
            )),
        },
    }
}
