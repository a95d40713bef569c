//! Commands whose result is shown to a person: the `return` value in the order QEMU
//! wrote its members ([`Request::send_ordered`](qemu_qmp::Request::send_ordered)), as
//! QEMU's Python tools show it.

use std::time::Duration;

use qemu_qmp::json::Ordered;
use qemu_qmp::{Client, Value};

/// Execute `command` and return its `return` value in QEMU's order: exact when
/// `client` was built with [`preserve_order`](qemu_qmp::ClientBuilder::preserve_order).
/// Errors as [`Client::execute`] gives them. `timeout` overrides the client's default
/// deadline; `None` keeps it.
pub(crate) async fn execute_ordered(
    client: &Client,
    command: &str,
    arguments: Option<Value>,
    timeout: Option<Duration>,
) -> qemu_qmp::Result<Ordered> {
    let mut request = client.request(command).arguments_opt(arguments);
    if let Some(t) = timeout {
        request = request.timeout(t);
    }
    request.send_ordered().await
}
