//! One client connection: reading requests, running them, writing answers.

use super::*;

/// The values of QEMU's `QMPCapability` enum.
const KNOWN_CAPABILITIES: &[&str] = &["oob"];

// ---- the connection -------------------------------------------------------------

pub(super) enum Ending {
    /// The server closes the connection (a fault, `quit`, an oversized request).
    Close,
    /// The client closed it.
    Eof,
    /// An I/O error.
    Failed(io::Error),
}

/// A reply delayed by [`Fault::Delay`].
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Delayed {
    pub(super) at: Instant,
    pub(super) seq: u64,
    pub(super) bytes: Vec<u8>,
}

pub(super) struct Connection {
    pub(super) shared: Arc<Shared>,
    pub(super) stream: Stream,
    pub(super) decoder: Decoder,
    /// What each read lands in before it goes to the decoder (see
    /// [`Stream::try_read_with_fds`]).
    scratch: Box<[u8]>,
    pub(super) out: Output,
    pub(super) delayed: BinaryHeap<Reverse<Delayed>>,
    pub(super) delay_seq: u64,
    pub(super) negotiated: bool,
    pub(super) oob: bool,
    /// The descriptors of the latest read that brought some (QEMU keeps only those).
    pub(super) fds: Vec<OwnedFd>,
    /// Requests of the current read batch, recorded in one go.
    pub(super) batch: Vec<JsonObject>,
    pub(super) batch_requests: usize,
    pub(super) unknown_ids: u64,
    pub(super) eof: bool,
    /// Emitted events are waiting in the shared queue for the output to drain.
    pub(super) events_more: bool,
    /// Reused buffer for moving events out of the shared queue.
    pub(super) event_batch: Vec<Event>,
}

impl Connection {
    pub(super) fn new(shared: Arc<Shared>, stream: Stream) -> Connection {
        let negotiated = !shared.config.negotiation;
        let max = shared.config.max_message_size;
        Connection {
            shared,
            stream,
            decoder: Decoder::new(max),
            scratch: vec![0; READ_WINDOW].into_boxed_slice(),
            out: Output::default(),
            delayed: BinaryHeap::new(),
            delay_seq: 0,
            negotiated,
            oob: false,
            fds: Vec::new(),
            batch: Vec::new(),
            batch_requests: 0,
            unknown_ids: 0,
            eof: false,
            events_more: false,
            event_batch: Vec::new(),
        }
    }

    pub(super) async fn run(&mut self) -> Ending {
        if let Some(g) = &self.shared.config.greeting {
            self.out.buf.extend_from_slice(g);
        }
        self.drop_unsent_events();
        if self.negotiated {
            self.take_events();
        }
        let mut timer = Box::pin(tokio::time::sleep_until(Instant::now()));
        let mut timer_at: Option<Instant> = None;
        loop {
            if let Err(e) = self.flush() {
                return Ending::Failed(e);
            }
            if self.out.close_now && self.out.pending() == 0 {
                return Ending::Close;
            }
            if self.eof {
                return Ending::Eof;
            }
            let next = self.delayed.peek().map(|Reverse(d)| d.at);
            if next != timer_at {
                if let Some(at) = next {
                    timer.as_mut().reset(at);
                }
                timer_at = next;
            }
            let want_read = !self.out.closing && self.out.buffered() < HIGH_WATER;
            let want_write = self.out.pending() > 0;
            tokio::select! {
                r = self.stream.readable(), if want_read => {
                    if let Err(e) = r.and_then(|()| self.read()) {
                        return Ending::Failed(e);
                    }
                }
                r = self.stream.writable(), if want_write => {
                    if let Err(e) = r {
                        return Ending::Failed(e);
                    }
                }
                () = &mut timer, if timer_at.is_some() => {
                    timer_at = None;
                    self.release_due();
                }
                () = self.shared.wake.notified() => {
                    if self.negotiated {
                        self.take_events();
                    } else {
                        self.drop_unsent_events();
                    }
                }
            }
        }
    }

    /// Write what is pending until done or the socket is full.
    ///
    /// Through [`Stream::try_write`], the client's own write path, but not through
    /// `transport::Writer`: this one task is the only writer, and [`Output`] already
    /// paces it (deferred floods turned into bytes as the socket drains, reads stopped
    /// above [`HIGH_WATER`], a close once everything before it is written). A
    /// `Writer` would add a lock, a copy of every reply into a queued chunk and a
    /// flusher task, for ordering guarantees that one task has anyway.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        loop {
            if self.events_more && self.negotiated && self.out.buffered() < LOW_WATER {
                self.take_events();
            }
            self.out.refill();
            if self.out.pending() == 0 {
                return Ok(());
            }
            match self.stream.try_write(&self.out.buf[self.out.pos..], &[]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Read what is available (a bounded number of times) and handle every complete
    /// request; the replies are written afterwards, together.
    pub(super) fn read(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for _ in 0..MAX_READS_PER_WAKE {
            match self.read_once() {
                Ok(0) => {
                    self.eof = true;
                    self.handle_messages(true);
                    break;
                }
                Ok(_) => {
                    self.handle_messages(false);
                    if self.out.closing || self.out.buffered() >= HIGH_WATER {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing more for now: look for messages not ended by a newline.
                    self.handle_messages(true);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.finish_batch();
        result
    }

    pub(super) fn read_once(&mut self) -> io::Result<usize> {
        let mut fds: Vec<OwnedFd> = Vec::new();
        let n = self.stream.try_read_with_fds(&mut self.scratch, &mut fds)?;
        self.decoder.extend(&self.scratch[..n]);
        if !fds.is_empty() {
            debug!("received {} descriptor(s) with SCM_RIGHTS", fds.len());
            self.shared.lock().fds_received += fds.len();
            // QEMU keeps only the descriptors of the latest read that brought some.
            self.fds = fds;
        }
        Ok(n)
    }

    pub(super) fn handle_messages(&mut self, idle: bool) {
        while !self.out.closing {
            match self.decoder.decode(idle) {
                Ok(Some(obj)) => self.handle(obj),
                Ok(None) => break,
                Err(FrameError::TooLarge { size, limit }) => {
                    warn!("request too large ({size} bytes, limit {limit}); closing");
                    let desc = format!(
                        "JSON parse error, message exceeds the size limit of {limit} bytes"
                    );
                    self.out
                        .write_with(|b| render_error(b, "GenericError", &desc, None));
                    self.out.close();
                }
                Err(e) => {
                    debug!("<-- unparsable input: {e}");
                    let desc = match &e {
                        FrameError::NotAnObject { .. } => {
                            "QMP input must be a JSON object".to_owned()
                        }
                        FrameError::Malformed { source, token, .. } => {
                            qemu_parse_error(source, token)
                        }
                        FrameError::TooLarge { .. } => e.to_string(),
                    };
                    self.out
                        .write_with(|b| render_error(b, "GenericError", &desc, None));
                    self.decoder.resync();
                }
            }
        }
    }

    /// Record the batch of requests and count them (before their replies are written,
    /// so whoever sees a reply also sees the request in `received()`).
    pub(super) fn finish_batch(&mut self) {
        if self.batch_requests == 0 {
            return;
        }
        if !self.batch.is_empty() {
            self.shared.lock().received.append(&mut self.batch);
        }
        let n = std::mem::take(&mut self.batch_requests);
        self.shared.counters.send_modify(|c| c.requests += n);
    }

    pub(super) fn handle(&mut self, obj: JsonObject) {
        self.batch_requests += 1;
        debug!("<-- {}", JsonDisplay(&obj));
        let id = obj.get("id");
        match check_request(&obj, self.oob) {
            Err(desc) => self
                .out
                .write_with(|b| render_error(b, "GenericError", &desc, id)),
            Ok((name, args, _oob)) => {
                let fault = self.shared.next_fault();
                let (answer, handler_fault, post) = self.dispatch(name, args);
                let hooked = match &self.shared.config.fault_hook {
                    Some(hook) => hook(name, args),
                    None => None,
                };
                let fault = fault.or(hooked).or(handler_fault);
                if let Some(f) = &fault {
                    debug!("fault on the reply to '{name}': {f:?}");
                }
                // Like QEMU, `quit` announces SHUTDOWN before its reply.
                if let Post::Quit = post {
                    self.write_event(&Event::new(
                        "SHUTDOWN",
                        Some(serde_json::json!({"guest": false, "reason": "host-qmp-quit"})),
                    ));
                }
                self.send_reply(&answer, id, fault);
                if let Post::Quit = post {
                    self.out.close();
                }
            }
        }
        if self.shared.config.record {
            self.batch.push(obj);
        }
    }

    /// Run a command; returns the answer, a fault the handler asked for, and what to
    /// do after the reply.
    pub(super) fn dispatch<'a>(
        &mut self,
        name: &str,
        args: &'a JsonObject,
    ) -> (Answer<'a>, Option<Fault>, Post) {
        if !self.negotiated {
            if name != "qmp_capabilities" {
                return (
                    Answer::error(
                        "CommandNotFound",
                        "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
                    ),
                    None,
                    Post::None,
                );
            }
            if let Some(reply) = self.call_handler(name, args) {
                if matches!(reply, Reply::Return(_) | Reply::Fault(_)) {
                    self.negotiated_with(args);
                }
                return reply_to_answer(reply);
            }
            return (self.qmp_capabilities(args), None, Post::None);
        }
        if let Some(reply) = self.call_handler(name, args) {
            return reply_to_answer(reply);
        }
        let answer = match name {
            "qmp_capabilities" => Answer::error(
                "CommandNotFound",
                "Capabilities negotiation is already complete, command ignored".into(),
            ),
            "echo" => Answer::Object(args),
            "query-version" => match no_arguments(args) {
                Err(e) => e,
                Ok(()) => Answer::Encoded(self.shared.config.version_json.clone()),
            },
            "query-commands" => match no_arguments(args) {
                Err(e) => e,
                Ok(()) => Answer::Encoded(self.shared.config.commands_json.clone()),
            },
            "query-status" => match no_arguments(args) {
                Err(e) => e,
                Ok(()) => Answer::Status {
                    running: self.shared.running.load(Ordering::Relaxed),
                    singlestep: self.shared.config.status_has_singlestep,
                },
            },
            "stop" => match no_arguments(args) {
                Err(e) => e,
                Ok(()) => {
                    if self.shared.running.swap(false, Ordering::Relaxed) {
                        self.write_event(&Event::new("STOP", None));
                    }
                    Answer::Empty
                }
            },
            "cont" => match no_arguments(args) {
                Err(e) => e,
                Ok(()) => {
                    self.shared.running.store(true, Ordering::Relaxed);
                    self.write_event(&Event::new("RESUME", None));
                    Answer::Empty
                }
            },
            "quit" => match no_arguments(args) {
                Err(e) => e,
                Ok(()) => return (Answer::Empty, None, Post::Quit),
            },
            "getfd" => self.getfd(args),
            "closefd" => self.closefd(args),
            _ => Answer::error(
                "CommandNotFound",
                format!("The command {name} has not been found"),
            ),
        };
        (answer, None, Post::None)
    }

    pub(super) fn call_handler(&self, name: &str, args: &JsonObject) -> Option<Reply> {
        self.shared.config.handlers.get(name).map(|h| h(args))
    }

    pub(super) fn negotiated_with(&mut self, args: &JsonObject) {
        self.negotiated = true;
        let wants_oob = args
            .get("enable")
            .and_then(Value::as_array)
            .is_some_and(|caps| caps.iter().any(|c| c == "oob"));
        self.oob = wants_oob && self.shared.config.capabilities.iter().any(|c| c == "oob");
        debug!("negotiated (oob {})", if self.oob { "on" } else { "off" });
        self.drop_unsent_events();
        self.take_events();
    }

    /// With [`TestServerBuilder::drop_unsent_events`], drop the events waiting to be
    /// sent (called while no client has negotiated).
    pub(super) fn drop_unsent_events(&mut self) {
        if !self.shared.config.drop_unsent_events {
            return;
        }
        let n = {
            let mut s = self.shared.lock();
            let n = s.events.len();
            s.events.clear();
            n
        };
        self.events_more = false;
        if n > 0 {
            debug!("dropped {n} event(s) emitted while no client had negotiated");
        }
    }

    /// `qmp_capabilities`, with QEMU's checks and error texts.
    pub(super) fn qmp_capabilities<'a>(&mut self, args: &JsonObject) -> Answer<'a> {
        let mut requested: Vec<&str> = Vec::new();
        for (key, value) in args {
            if key != "enable" {
                return Answer::error("GenericError", format!("Parameter '{key}' is unexpected"));
            }
            let Value::Array(caps) = value else {
                return Answer::error(
                    "GenericError",
                    "Invalid parameter type for 'enable', expected: array".into(),
                );
            };
            for (i, c) in caps.iter().enumerate() {
                match c.as_str() {
                    // QEMU's QMPCapability enum knows only `oob` (7.2 and 10.0); the
                    // odd parameter name is QEMU's own wording for list elements.
                    Some(s) if !KNOWN_CAPABILITIES.contains(&s) => {
                        return Answer::error(
                            "GenericError",
                            format!("Parameter 'null' does not accept value '{s}'"),
                        )
                    }
                    Some(s) => requested.push(s),
                    None => {
                        return Answer::error(
                            "GenericError",
                            format!("Invalid parameter type for 'enable[{i}]', expected: string"),
                        )
                    }
                }
            }
        }
        let offered = &self.shared.config.capabilities;
        let unavailable: Vec<&str> = requested
            .iter()
            .copied()
            .filter(|r| !offered.iter().any(|o| o == r))
            .collect();
        if !unavailable.is_empty() {
            return Answer::error(
                "GenericError",
                format!("Capability {} not available", unavailable.join(", ")),
            );
        }
        self.negotiated_with(args);
        Answer::Empty
    }

    pub(super) fn getfd<'a>(&mut self, args: &JsonObject) -> Answer<'a> {
        let name = match fdname(args) {
            Ok(n) => n,
            Err(e) => return e,
        };
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            return Answer::error(
                "GenericError",
                "Parameter 'fdname' expects a name not starting with a digit".into(),
            );
        }
        if self.fds.is_empty() {
            return Answer::error(
                "GenericError",
                "No file descriptor supplied via SCM_RIGHTS".into(),
            );
        }
        // Like QEMU: take the first descriptor of the latest set, close the others.
        let fd = self.fds.swap_remove(0);
        self.fds.clear();
        // Replacing a descriptor of the same name closes the old one.
        self.shared.lock().named_fds.insert(name.to_owned(), fd);
        Answer::Empty
    }

    pub(super) fn closefd<'a>(&mut self, args: &JsonObject) -> Answer<'a> {
        let name = match fdname(args) {
            Ok(n) => n,
            Err(e) => return e,
        };
        match self.shared.lock().named_fds.remove(name) {
            Some(_fd) => Answer::Empty,
            None => Answer::error(
                "GenericError",
                format!("File descriptor named '{name}' not found"),
            ),
        }
    }

    pub(super) fn write_event(&mut self, event: &Event) {
        self.out.write_with(|b| write_message(b, event.as_object()));
    }

    /// Move emitted events to the output, a batch at a time while little output is
    /// waiting; `events_more` says whether some are left for later.
    pub(super) fn take_events(&mut self) {
        while self.out.buffered() < FLOOD_CHUNK && !self.out.closing {
            let more = {
                let mut s = self.shared.lock();
                let k = s.events.len().min(EVENT_BATCH);
                self.event_batch.extend(s.events.drain(..k));
                !s.events.is_empty()
            };
            self.events_more = more;
            if self.event_batch.is_empty() {
                return;
            }
            let batch = std::mem::take(&mut self.event_batch);
            self.out.write_with(|b| {
                for e in &batch {
                    write_message(b, e.as_object());
                }
            });
            self.event_batch = batch;
            self.event_batch.clear();
            if !more {
                return;
            }
        }
    }

    pub(super) fn release_due(&mut self) {
        let now = Instant::now();
        while self.delayed.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(d)) = self.delayed.pop() {
                self.out.write_with(|b| b.extend_from_slice(&d.bytes));
            }
        }
    }

    pub(super) fn send_reply(
        &mut self,
        answer: &Answer<'_>,
        id: Option<&Value>,
        fault: Option<Fault>,
    ) {
        let Some(fault) = fault else {
            self.out.write_with(|b| render(b, answer, id));
            return;
        };
        match fault {
            Fault::Delay(d) => {
                let mut bytes = Vec::new();
                render(&mut bytes, answer, id);
                // A delay too long to represent is a hang.
                if let Some(at) = Instant::now().checked_add(d) {
                    self.delay_seq += 1;
                    self.delayed.push(Reverse(Delayed {
                        at,
                        seq: self.delay_seq,
                        bytes,
                    }));
                }
            }
            Fault::CloseMidMessage => {
                let mut bytes = Vec::new();
                render(&mut bytes, answer, id);
                let half = (bytes.len() / 2).max(1).min(bytes.len());
                self.out.write_with(|b| b.extend_from_slice(&bytes[..half]));
                self.out.close();
            }
            Fault::Garbage(bytes) => self.out.write_with(|b| b.extend_from_slice(&bytes)),
            Fault::Oversized(size) => self.out.write_with(|b| render_oversized(b, size, id)),
            Fault::UnknownId => {
                self.unknown_ids += 1;
                let fake = Value::String(format!(
                    "qemu-qmp-test-server:unknown-id:{}",
                    self.unknown_ids
                ));
                self.out.write_with(|b| render(b, answer, Some(&fake)));
            }
            Fault::NoId => self.out.write_with(|b| render(b, answer, None)),
            Fault::FloodEvents(n) => {
                self.out.flood(n);
                self.out.write_with(|b| render(b, answer, id));
            }
            Fault::Disconnect => self.out.close(),
            Fault::Hang => {}
        }
    }

    /// Shut down our sending side and drain the client's input until it closes (or
    /// [`LINGER`] passes), so that it reads a clean end of stream: closing a socket
    /// with unread input makes the peer's next read fail with "connection reset".
    pub(super) async fn linger(&mut self) {
        self.stream.shutdown_write();
        self.fds.clear();
        let stream = &self.stream;
        let mut scratch = Vec::with_capacity(READ_CHUNK);
        let _ = tokio::time::timeout(LINGER, async {
            loop {
                if stream.readable().await.is_err() {
                    return;
                }
                scratch.clear();
                match stream.try_read_buf(&mut scratch) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}
