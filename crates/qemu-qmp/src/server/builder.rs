//! Building a test server: what it answers and how it misbehaves.

use super::*;

// ---- public types ---------------------------------------------------------------

/// What a command handler answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A success reply, `{"return": value, "id": ...}`.
    Return(Value),
    /// An error reply, `{"error": {"class": class, "desc": desc}, "id": ...}`.
    Error {
        /// The QMP error class, e.g. `GenericError`.
        class: String,
        /// The human-readable description.
        desc: String,
    },
    /// This object, sent exactly as given: no id is added. For replies (or anything
    /// else) a test wants byte-for-byte control over.
    Raw(JsonObject),
    /// This object with the request's `id` added, replacing any `id` in it (sent as
    /// is when the request had none), for malformed replies that must still reach the
    /// command that asked.
    WithId(JsonObject),
    /// No reply at all (like [`Fault::Hang`]).
    NoReply,
    /// `{"return": {}}` with this fault applied. An injected fault
    /// ([`TestServer::inject`]) takes precedence over it.
    Fault(Fault),
}

impl Reply {
    /// An error reply.
    pub fn error(class: impl Into<String>, desc: impl Into<String>) -> Reply {
        Reply::Error {
            class: class.into(),
            desc: desc.into(),
        }
    }
}

/// A misbehaviour of the server, applied to the reply of one command.
///
/// The command itself is still executed (`stop` still stops and emits `STOP`); the
/// fault changes what happens to its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Send the reply after this delay. Other commands keep flowing meanwhile, so their
    /// replies overtake this one. Delayed replies leave in deadline order; ones still
    /// waiting when the connection ends are dropped.
    Delay(Duration),
    /// Write the first half of the reply, then close the connection.
    CloseMidMessage,
    /// Write these bytes instead of the reply (the connection stays open).
    Garbage(Vec<u8>),
    /// Reply `{"return": {"data": "xxx..."}, "id": ...}`, padded to about this many
    /// bytes (CRLF included).
    Oversized(usize),
    /// Reply with an id nobody sent.
    UnknownId,
    /// Reply without the `id` member.
    NoId,
    /// Send this many [`FLOOD_EVENT`] events before the reply.
    FloodEvents(usize),
    /// Close the connection without replying.
    Disconnect,
    /// Never reply.
    Hang,
}

pub(super) type Handler = Arc<dyn Fn(&JsonObject) -> Reply + Send + Sync>;
pub(super) type FaultHook = Arc<dyn Fn(&str, &JsonObject) -> Option<Fault> + Send + Sync>;

#[derive(Clone)]
pub(super) enum GreetingMode {
    Standard,
    None,
    Custom(JsonObject),
}

/// Builds a [`TestServer`]; see [`TestServer::builder`].
#[derive(Clone)]
pub struct TestServerBuilder {
    pub(super) version: VersionInfo,
    pub(super) capabilities: Vec<String>,
    pub(super) greeting: GreetingMode,
    pub(super) handlers: HashMap<String, Handler>,
    pub(super) fault_hook: Option<FaultHook>,
    pub(super) drop_unsent_events: bool,
    pub(super) record: bool,
    pub(super) max_message_size: usize,
}

impl fmt::Debug for TestServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut handlers: Vec<&String> = self.handlers.keys().collect();
        handlers.sort();
        f.debug_struct("TestServerBuilder")
            .field("version", &self.version)
            .field("capabilities", &self.capabilities)
            .field(
                "greeting",
                &match &self.greeting {
                    GreetingMode::Standard => "standard",
                    GreetingMode::None => "none",
                    GreetingMode::Custom(_) => "custom",
                },
            )
            .field("handlers", &handlers)
            .field("fault_hook", &self.fault_hook.is_some())
            .field("drop_unsent_events", &self.drop_unsent_events)
            .field("record", &self.record)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl Default for TestServerBuilder {
    /// QEMU 9.2.0, package "qemu-qmp test server", offering `oob`, recording requests.
    fn default() -> Self {
        TestServerBuilder {
            version: VersionInfo {
                qemu: VersionTriple {
                    major: 9,
                    minor: 2,
                    micro: 0,
                },
                package: "qemu-qmp test server".into(),
            },
            capabilities: vec!["oob".into()],
            greeting: GreetingMode::Standard,
            handlers: HashMap::new(),
            fault_hook: None,
            drop_unsent_events: false,
            record: true,
            max_message_size: DEFAULT_SERVER_MAX_MESSAGE_SIZE,
        }
    }
}

impl TestServerBuilder {
    /// The version in the greeting and in `query-version` (default 9.2.0, package
    /// "qemu-qmp test server").
    pub fn version(mut self, version: VersionInfo) -> Self {
        self.version = version;
        self
    }

    /// The capabilities offered in the greeting (default `["oob"]`).
    /// `qmp_capabilities` accepts only these.
    pub fn capabilities(mut self, capabilities: Vec<String>) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Guest-agent style: send no greeting and require no negotiation; every command
    /// is accepted from the start and events flow at once.
    pub fn no_greeting(mut self) -> Self {
        self.greeting = GreetingMode::None;
        self
    }

    /// Send this object as the greeting instead of the standard one (to test how
    /// clients handle bad greetings). Negotiation is still required.
    pub fn greeting(mut self, greeting: JsonObject) -> Self {
        self.greeting = GreetingMode::Custom(greeting);
        self
    }

    /// Answer `command` with `f`, which gets the request's `arguments` (an empty
    /// object when there are none). Overrides a built-in command of the same name;
    /// a handler for `qmp_capabilities` that returns [`Reply::Return`] completes
    /// negotiation (enabling OOB if the request asked for it and it was offered).
    pub fn handler(
        mut self,
        command: &str,
        f: impl Fn(&JsonObject) -> Reply + Send + Sync + 'static,
    ) -> Self {
        self.handlers.insert(command.to_owned(), Arc::new(f));
        self
    }

    /// Ask `f` for a fault for every command, with the command's name and arguments
    /// (an empty object when there are none), after the command ran and before its
    /// reply is sent. Called for every well-formed request, `qmp_capabilities` and
    /// unknown commands included. A fault queued with [`TestServer::inject`] takes
    /// precedence over the one `f` returns, which takes precedence over a
    /// [`Reply::Fault`] from a handler.
    pub fn fault_hook(
        mut self,
        f: impl Fn(&str, &JsonObject) -> Option<Fault> + Send + Sync + 'static,
    ) -> Self {
        self.fault_hook = Some(Arc::new(f));
        self
    }

    /// Like QEMU, drop the events [emitted](TestServer::emit) while no client has
    /// completed negotiation (none is connected, or the one connected has not sent
    /// `qmp_capabilities` yet), instead of keeping them for the next client (default
    /// false). Clients that expect the reply to `qmp_capabilities` to be the first
    /// message after the greeting need this when events are emitted at any time.
    pub fn drop_unsent_events(mut self, yes: bool) -> Self {
        self.drop_unsent_events = yes;
        self
    }

    /// Record every request for [`TestServer::received`] (default true). Turn off for
    /// benchmarks; [`TestServer::requests`] still counts.
    pub fn record(mut self, yes: bool) -> Self {
        self.record = yes;
        self
    }

    /// The largest request accepted (default [`DEFAULT_SERVER_MAX_MESSAGE_SIZE`]).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Listen on a Unix socket at `path` (which must not exist). The socket file is
    /// removed when the server is dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as tokio's own listeners do.
    pub fn bind_unix(self, path: impl AsRef<Path>) -> io::Result<TestServer> {
        let path = path.as_ref().to_owned();
        // Adopted, so the listener leaves the file alone: `TestServer` removes it
        // only if it is still ours.
        let listener = Listener::from_std_unix(std::os::unix::net::UnixListener::bind(&path)?)?;
        let identity = file_identity(&path);
        let shared = self.into_shared();
        info!("QMP test server listening on {}", path.display());
        let task = spawn_server(shared.clone(), Listening::Listener(listener));
        Ok(TestServer {
            shared,
            task: Some(task),
            local: Local::Unix { path, identity },
        })
    }

    /// Listen on TCP, e.g. `"127.0.0.1:0"` for a free port
    /// ([`TestServer::address`] tells which).
    pub async fn bind_tcp(self, addr: &str) -> io::Result<TestServer> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let listener = Listener::from_std_tcp(listener.into_std()?)?;
        let shared = self.into_shared();
        info!("QMP test server listening on {local}");
        let task = spawn_server(shared.clone(), Listening::Listener(listener));
        Ok(TestServer {
            shared,
            task: Some(task),
            local: Local::Tcp(local),
        })
    }

    /// Serve one end of a new socket pair and return the other end (in blocking
    /// mode, as `std` makes it), e.g. for `Client::connect`. Counts as one connection;
    /// the server has no address.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as tokio's own sockets do.
    pub fn socketpair(self) -> io::Result<(TestServer, std::os::unix::net::UnixStream)> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let ours = UnixStream::from_std(ours)?;
        let shared = self.into_shared();
        shared.counters.send_modify(|c| c.accepted += 1);
        let task = spawn_server(shared.clone(), Listening::Pair(Stream::Unix(ours)));
        Ok((
            TestServer {
                shared,
                task: Some(task),
                local: Local::Pair,
            },
            theirs,
        ))
    }

    fn into_shared(self) -> Arc<Shared> {
        let mut greeting_bytes = Vec::new();
        let (greeting, negotiation) = match self.greeting {
            GreetingMode::Standard => {
                let g = Greeting::new(self.version.clone(), self.capabilities.clone());
                write_message(&mut greeting_bytes, &g.raw);
                (Some(greeting_bytes), true)
            }
            GreetingMode::Custom(obj) => {
                write_message(&mut greeting_bytes, &obj);
                (Some(greeting_bytes), true)
            }
            GreetingMode::None => (None, false),
        };
        let mut version_json = Vec::new();
        match serde_json::to_value(&self.version) {
            Ok(v) => write_value(&mut version_json, &v),
            Err(_) => write_json(&mut version_json, &self.version),
        }
        let q = &self.version.qemu;
        let status_has_singlestep = (q.major, q.minor) < (9, 0);
        let mut names: Vec<&str> = BUILTIN_COMMANDS.to_vec();
        let mut extra: Vec<&str> = self
            .handlers
            .keys()
            .map(String::as_str)
            .filter(|n| !BUILTIN_COMMANDS.contains(n))
            .collect();
        extra.sort_unstable();
        names.extend(extra);
        let commands: Vec<Value> = names
            .iter()
            .map(|n| serde_json::json!({ "name": n }))
            .collect();
        let mut commands_json = Vec::new();
        write_value(&mut commands_json, &Value::Array(commands));
        Arc::new(Shared {
            config: Config {
                greeting,
                negotiation,
                capabilities: self.capabilities,
                version_json: version_json.into(),
                status_has_singlestep,
                commands_json: commands_json.into(),
                handlers: self.handlers,
                fault_hook: self.fault_hook,
                drop_unsent_events: self.drop_unsent_events,
                record: self.record,
                max_message_size: self.max_message_size,
            },
            state: Mutex::new(State::default()),
            faults_pending: AtomicUsize::new(0),
            running: AtomicBool::new(true),
            wake: Notify::new(),
            counters: watch::channel(Counters::default()).0,
        })
    }
}
