//! Tests of the qtest client: first against a scripted fake QEMU on a
//! socketpair (exact wire format, IRQ interleaving, timeouts, errors), then
//! against a real `qemu-system-x86_64`.
//!
//! The real-QEMU tests skip with a `SKIPPED:` line on stderr when the binary
//! is missing (set `QEMU_SYSTEM_X86_64` to use another one), and fail under
//! `CI=true`. QEMU runs with `-accel qtest` when the binary has it, else with
//! `-accel tcg -S` (Debian's 7.2 and 10.0 builds lack the qtest accelerator):
//! everything but the clock commands works the same. The clock test is the one
//! place that says, with a `SKIPPED:` line, that the clock arithmetic went
//! untested.

use std::future::Future as _;
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use qemu_machine::qtest::{Endianness, IrqEvent, QtestClient, QtestError, UNNAMED_GPIO_IN};
use qemu_testkit::{above_stdio, loud, test_name, QemuProcess};
use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

/// Bound for anything that should happen promptly, generous for slow CI.
const PROMPT: Duration = Duration::from_secs(10);

// ===========================================================================
// Fake QEMU
// ===========================================================================

/// The QEMU side of a socketpair, driven by the test.
struct FakeQemu {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl FakeQemu {
    /// The next command line the client sent, without its newline.
    async fn recv(&mut self) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(PROMPT, self.reader.read_line(&mut line))
            .await
            .expect("timed out waiting for a command")
            .expect("read from the client");
        assert!(n > 0, "client closed the connection");
        assert!(line.ends_with('\n'), "partial line {line:?}");
        line.pop();
        line
    }

    /// Asserts that the client sends nothing for a while.
    async fn expect_silence(&mut self, for_: Duration) {
        let mut line = String::new();
        if let Ok(r) = tokio::time::timeout(for_, self.reader.read_line(&mut line)).await {
            panic!("expected silence, got {r:?}: {line:?}");
        }
    }

    /// Sends raw text (lines must include their newlines).
    async fn send(&mut self, text: &str) {
        self.writer
            .write_all(text.as_bytes())
            .await
            .expect("write to the client");
    }
}

fn fake() -> (QtestClient, FakeQemu) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let (r, w) = theirs.into_split();
    (
        QtestClient::new(ours),
        FakeQemu {
            reader: BufReader::new(r),
            writer: w,
        },
    )
}

/// Runs `call` while the fake QEMU expects `line` and answers `reply`
/// (which may contain several lines, e.g. IRQ notifications first).
async fn exchange<T>(
    fake: &mut FakeQemu,
    call: impl std::future::Future<Output = T>,
    line: &str,
    reply: &str,
) -> T {
    let server = async {
        assert_eq!(fake.recv().await, line);
        fake.send(reply).await;
    };
    let (result, ()) = tokio::join!(call, server);
    result
}

fn raise(line: u32) -> IrqEvent {
    IrqEvent { line, raised: true }
}

fn lower(line: u32) -> IrqEvent {
    IrqEvent {
        line,
        raised: false,
    }
}

#[tokio::test]
async fn fake_wire_format_of_typed_commands() {
    let (c, mut q) = fake();
    let f = &mut q;
    let big = "OK 0x00000000000000ab\n";
    assert_eq!(
        exchange(f, c.readb(0x10_0000), "readb 0x100000", big)
            .await
            .unwrap(),
        0xab
    );
    assert_eq!(
        exchange(f, c.readw(0x2), "readw 0x2", "OK 0x000000000000beef\n")
            .await
            .unwrap(),
        0xbeef
    );
    assert_eq!(
        exchange(f, c.readl(0x4), "readl 0x4", "OK 0x00000000deadbeef\n")
            .await
            .unwrap(),
        0xdead_beef
    );
    assert_eq!(
        exchange(f, c.readq(0x8), "readq 0x8", "OK 0xffffffffffffffff\n")
            .await
            .unwrap(),
        u64::MAX
    );
    exchange(f, c.writeb(0x1, 0xff), "writeb 0x1 0xff", "OK\n")
        .await
        .unwrap();
    exchange(f, c.writew(0x1, 0x1234), "writew 0x1 0x1234", "OK\n")
        .await
        .unwrap();
    exchange(
        f,
        c.writel(0x10_0000, 0xdead_beef),
        "writel 0x100000 0xdeadbeef",
        "OK\n",
    )
    .await
    .unwrap();
    exchange(
        f,
        c.writeq(0, u64::MAX),
        "writeq 0x0 0xffffffffffffffff",
        "OK\n",
    )
    .await
    .unwrap();
    assert_eq!(
        exchange(f, c.inb(0x3fd), "inb 0x3fd", "OK 0x0060\n")
            .await
            .unwrap(),
        0x60
    );
    assert_eq!(
        exchange(f, c.inw(0xcfc), "inw 0xcfc", "OK 0xffff\n")
            .await
            .unwrap(),
        0xffff
    );
    assert_eq!(
        exchange(f, c.inl(0xcfc), "inl 0xcfc", "OK 0x8086\n")
            .await
            .unwrap(),
        0x8086
    );
    exchange(f, c.outb(0x3f8, b'A'), "outb 0x3f8 0x41", "OK\n")
        .await
        .unwrap();
    exchange(f, c.outw(0x70, 0x0102), "outw 0x70 0x102", "OK\n")
        .await
        .unwrap();
    exchange(
        f,
        c.outl(0xcf8, 0x8000_0000),
        "outl 0xcf8 0x80000000",
        "OK\n",
    )
    .await
    .unwrap();
    assert_eq!(
        exchange(f, c.memread(0x10, 3), "read 0x10 0x3", "OK 0x0102ff\n")
            .await
            .unwrap(),
        vec![1, 2, 0xff]
    );
    exchange(
        f,
        c.memwrite(0x10, &[1, 2, 0xff]),
        "write 0x10 0x3 0x0102ff",
        "OK\n",
    )
    .await
    .unwrap();
    exchange(
        f,
        c.memset(0x10, 0x1000, 0xaa),
        "memset 0x10 0x1000 0xaa",
        "OK\n",
    )
    .await
    .unwrap();
    assert_eq!(
        exchange(f, c.b64read(0x10, 4), "b64read 0x10 0x4", "OK 776t3g==\n")
            .await
            .unwrap(),
        vec![0xef, 0xbe, 0xad, 0xde]
    );
    exchange(
        f,
        c.b64write(0x10, b"foo"),
        "b64write 0x10 0x3 Zm9v",
        "OK\n",
    )
    .await
    .unwrap();
    assert_eq!(
        exchange(f, c.clock_step(1000), "clock_step 1000", "OK 1000\n")
            .await
            .unwrap(),
        1000
    );
    assert_eq!(
        exchange(f, c.clock_step_next(), "clock_step", "OK 5000\n")
            .await
            .unwrap(),
        5000
    );
    assert_eq!(
        exchange(f, c.clock_set(-1), "clock_set -1", "OK 5000\n")
            .await
            .unwrap(),
        5000
    );
    exchange(
        f,
        c.irq_intercept_in("ioapic"),
        "irq_intercept_in ioapic",
        "OK\n",
    )
    .await
    .unwrap();
    exchange(
        f,
        c.irq_intercept_out("/machine/x"),
        "irq_intercept_out /machine/x",
        "OK\n",
    )
    .await
    .unwrap();
    exchange(
        f,
        c.set_irq_in("ioapic", UNNAMED_GPIO_IN, 5, -1),
        "set_irq_in ioapic unnamed-gpio-in 5 -1",
        "OK\n",
    )
    .await
    .unwrap();
    assert_eq!(
        exchange(f, c.endianness(), "endianness", "OK big\n")
            .await
            .unwrap(),
        Endianness::Big
    );
    assert_eq!(
        exchange(f, c.cmd("module_load a b"), "module_load a b", "OK\n")
            .await
            .unwrap(),
        ""
    );
    assert_eq!(
        exchange(f, c.cmd_reply("anything"), "anything", "WHATEVER it says\n")
            .await
            .unwrap(),
        "WHATEVER it says"
    );

    // Zero-length transfers never reach QEMU (a zero-length `read` aborts it).
    assert_eq!(c.memread(0, 0).await.unwrap(), Vec::<u8>::new());
    assert_eq!(c.b64read(0, 0).await.unwrap(), Vec::<u8>::new());
    c.memwrite(0, &[]).await.unwrap();
    c.b64write(0, &[]).await.unwrap();
    f.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn fake_irq_lines_before_a_reply_are_collected_not_returned() {
    let (c, mut q) = fake();
    let value = exchange(
        &mut q,
        c.readb(0x10),
        "readb 0x10",
        "IRQ raise 3\nIRQ raise 4\nIRQ lower 3\nOK 0x0000000000000007\n",
    )
    .await
    .unwrap();
    assert_eq!(value, 7);
    assert!(!c.get_irq(3));
    assert!(c.get_irq(4));
    assert_eq!(c.irqs(), vec![raise(3), raise(4), lower(3)]);
    assert_eq!(c.irqs(), vec![], "irqs() drains");
    assert!(c.get_irq(4), "irqs() does not change the levels");

    // Malformed notifications are dropped, not taken for replies either.
    let value = exchange(
        &mut q,
        c.readb(0x11),
        "readb 0x11",
        "IRQ sideways 3\nIRQ raise\nOK 0x01\n",
    )
    .await
    .unwrap();
    assert_eq!(value, 1);
    assert_eq!(c.irqs(), vec![]);
}

#[tokio::test]
async fn fake_irq_lines_between_commands_are_collected() {
    let (c, mut q) = fake();
    q.send("IRQ raise 7\nIRQ raise 9\n").await;
    c.wait_irq(9, true, PROMPT).await.unwrap();
    assert!(c.get_irq(7) && c.get_irq(9));
    // wait_irq took only the event it waited for.
    assert_eq!(c.irqs(), vec![raise(7)]);

    // A waiter is woken by a notification that arrives after it started: poll it
    // once (it registers for notifications and finds none to take), then send.
    let waiter = c.wait_irq(7, false, PROMPT);
    tokio::pin!(waiter);
    let first = std::future::poll_fn(|cx| Poll::Ready(waiter.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "no IRQ lower 7 was sent yet: {first:?}");
    q.send("IRQ lower 7\n").await;
    waiter.await.unwrap();
    assert!(!c.get_irq(7));
    assert_eq!(c.irqs(), vec![]);

    let start = Instant::now();
    match c.wait_irq(1, true, Duration::from_millis(100)).await {
        Err(QtestError::Timeout { timeout, .. }) => assert_eq!(timeout, Duration::from_millis(100)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn fake_late_reply_after_timeout_is_discarded() {
    let (c, mut q) = fake();
    c.set_timeout(Duration::from_millis(200));
    assert_eq!(c.timeout(), Duration::from_millis(200));
    let start = Instant::now();
    match c.readb(0x1).await {
        Err(QtestError::Timeout { command, timeout }) => {
            assert_eq!(command, "readb 0x1");
            assert_eq!(timeout, Duration::from_millis(200));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(start.elapsed() < PROMPT);
    assert_eq!(q.recv().await, "readb 0x1");
    // The late answer arrives; the next command must get its own.
    q.send("OK 0x00000000000000aa\n").await;
    c.set_timeout(PROMPT);
    let value = exchange(&mut q, c.readb(0x2), "readb 0x2", "OK 0x00000000000000bb\n")
        .await
        .unwrap();
    assert_eq!(value, 0xbb);

    // Same when the caller drops the future itself instead.
    let _ = tokio::time::timeout(Duration::from_millis(50), c.readb(0x3)).await;
    assert_eq!(q.recv().await, "readb 0x3");
    q.send("OK 0x03\n").await;
    let value = exchange(&mut q, c.readb(0x4), "readb 0x4", "OK 0x04\n")
        .await
        .unwrap();
    assert_eq!(value, 4);
}

#[tokio::test]
async fn fake_fail_err_and_malformed_replies() {
    let (c, mut q) = fake();
    match exchange(
        &mut q,
        c.cmd("foo 1"),
        "foo 1",
        "FAIL Unknown command 'foo'\n",
    )
    .await
    {
        Err(QtestError::Failed { command, reason }) => {
            assert_eq!(command, "foo 1");
            assert_eq!(reason, "Unknown command 'foo'");
        }
        other => panic!("{other:?}"),
    }
    match exchange(
        &mut q,
        c.memwrite(0, &[1]),
        "write 0x0 0x1 0x01",
        "ERR invalid argument size\n",
    )
    .await
    {
        Err(QtestError::Failed { reason, .. }) => assert_eq!(reason, "invalid argument size"),
        other => panic!("{other:?}"),
    }
    let bad: [(&str, &str); 7] = [
        ("readb 0x0", "OK 0x100\n"),
        ("readb 0x0", "OK\n"),
        ("readb 0x0", "OK 12\n"),
        ("readb 0x0", "garbage\n"),
        ("readb 0x0", "\n"),
        ("readb 0x0", "OK \u{fffd}\n"),
        ("readb 0x0", "OK 0x0x1\n"),
    ];
    for (line, reply) in bad {
        match exchange(&mut q, c.readb(0), line, reply).await {
            Err(QtestError::Protocol { command, line: got }) => {
                assert_eq!(command, line);
                assert_eq!(got, reply.trim_end_matches('\n'));
            }
            other => panic!("{reply:?}: {other:?}"),
        }
    }
    let r = exchange(&mut q, c.writeb(0, 1), "writeb 0x0 0x1", "OK 0x12\n").await;
    assert!(matches!(r, Err(QtestError::Protocol { .. })), "{r:?}");
    let r = exchange(&mut q, c.memread(0, 2), "read 0x0 0x2", "OK 0x0102ff\n").await;
    assert!(matches!(r, Err(QtestError::Protocol { .. })), "{r:?}");
    let r = exchange(&mut q, c.b64read(0, 2), "b64read 0x0 0x2", "OK Zm9v\n").await;
    assert!(matches!(r, Err(QtestError::Protocol { .. })), "{r:?}");
    let r = exchange(&mut q, c.clock_step(1), "clock_step 1", "OK soon\n").await;
    assert!(matches!(r, Err(QtestError::Protocol { .. })), "{r:?}");
    let r = exchange(&mut q, c.endianness(), "endianness", "OK middle\n").await;
    assert!(matches!(r, Err(QtestError::Protocol { .. })), "{r:?}");
    let r = exchange(&mut q, c.cmd_reply("x"), "x", "OK \u{ff}\n")
        .await
        .unwrap();
    assert_eq!(r, "OK \u{ff}");
    // A line that answers no command (here also invalid UTF-8) is dropped
    // with a warning. The IRQ line after it shows when the reader got past it.
    q.writer
        .write_all(b"OK \xff\xfe\nIRQ raise 1\n")
        .await
        .unwrap();
    c.wait_irq(1, true, PROMPT).await.unwrap();
    let v = exchange(&mut q, c.readb(5), "readb 0x5", "OK 0x05\n")
        .await
        .unwrap();
    assert_eq!(v, 5);
}

#[tokio::test]
async fn fake_invalid_arguments_send_nothing() {
    let (c, mut q) = fake();
    let results = [
        c.cmd("").await.map(drop),
        c.cmd("readb 0\nreadb 1").await.map(drop),
        c.cmd("readb 0\r").await.map(drop),
        c.cmd_reply("a\0b").await.map(drop),
        c.irq_intercept_in("").await,
        c.irq_intercept_in("io apic").await,
        c.irq_intercept_out("a\nb").await,
        c.set_irq_in("ioapic", "un named", 1, 1).await,
        c.set_irq_in("ioapic", UNNAMED_GPIO_IN, u32::MAX, 1).await,
        c.clock_step(u64::MAX).await.map(drop),
    ];
    for r in results {
        assert!(matches!(r, Err(QtestError::InvalidArgument(_))), "{r:?}");
    }
    let v = exchange(&mut q, c.readb(1), "readb 0x1", "OK 0x01\n")
        .await
        .unwrap();
    assert_eq!(v, 1);
}

#[tokio::test]
async fn fake_commands_are_serialised() {
    let (c, mut q) = fake();
    let c = Arc::new(c);
    let first = tokio::spawn({
        let c = Arc::clone(&c);
        async move { c.readb(1).await }
    });
    assert_eq!(q.recv().await, "readb 0x1");
    let second = tokio::spawn({
        let c = Arc::clone(&c);
        async move { c.readb(2).await }
    });
    // The second command waits for the first one's reply.
    q.expect_silence(Duration::from_millis(150)).await;
    q.send("OK 0x01\n").await;
    assert_eq!(q.recv().await, "readb 0x2");
    q.send("OK 0x02\n").await;
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(second.await.unwrap().unwrap(), 2);
}

#[tokio::test]
async fn fake_closed_connection() {
    let (c, mut q) = fake();
    // A command in flight when QEMU goes away fails with Closed.
    let call = c.readb(0);
    let server = async {
        assert_eq!(q.recv().await, "readb 0x0");
        q.send("IRQ raise 2\n").await;
        drop(q);
    };
    let (r, ()) = tokio::join!(call, server);
    assert!(matches!(r, Err(QtestError::Closed)), "{r:?}");
    assert!(c.is_closed());
    // So do later commands and IRQ waits, at once.
    let start = Instant::now();
    assert!(matches!(c.readb(0).await, Err(QtestError::Closed)));
    assert!(matches!(c.cmd("x").await, Err(QtestError::Closed)));
    assert!(matches!(
        c.wait_irq(5, true, PROMPT).await,
        Err(QtestError::Closed)
    ));
    assert!(start.elapsed() < Duration::from_secs(1));
    // What was collected before stays available.
    c.wait_irq(2, true, PROMPT).await.unwrap();
    assert!(c.get_irq(2));
}

#[tokio::test]
async fn fake_drop_closes_the_connection() {
    let (c, mut q) = fake();
    drop(c);
    let mut rest = Vec::new();
    let n = tokio::time::timeout(PROMPT, q.reader.read_to_end(&mut rest))
        .await
        .expect("the client's tasks did not stop")
        .unwrap();
    assert_eq!(n, 0);
    assert!(format!("{:?}", fake().0).starts_with("QtestClient"));
}

#[test]
fn from_std_inside_a_runtime_context() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ours, theirs) = StdUnixStream::pair().unwrap();
    let client = {
        let _guard = rt.enter();
        QtestClient::from_std(ours).unwrap()
    };
    let mut theirs = theirs;
    rt.block_on(async {
        let server = tokio::task::spawn_blocking(move || {
            use std::io::{BufRead as _, BufReader as StdBufReader};
            let mut line = String::new();
            StdBufReader::new(theirs.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line, "endianness\n");
            theirs.write_all(b"OK little\n").unwrap();
            theirs
        });
        assert_eq!(client.endianness().await.unwrap(), Endianness::Little);
        drop(server.await.unwrap());
    });
    drop(client);
}

// ===========================================================================
// Real QEMU
// ===========================================================================

/// Whether `binary` has the qtest accelerator (cached per process).
fn has_qtest_accel(binary: &Path) -> bool {
    static CACHE: OnceLock<bool> = OnceLock::new();
    *CACHE.get_or_init(|| qemu_testkit::has_qtest_accel(binary))
}

/// A QEMU child with its qtest channel and serial console on socketpairs.
/// Killed (SIGKILL) and reaped on drop; dies with the test process too.
struct Qemu {
    process: QemuProcess,
    qtest_accel: bool,
}

impl Qemu {
    /// Starts `-machine pc` with qtest on one socketpair and COM1 on another;
    /// returns the client and our end of the console. `None` if skipped.
    async fn start() -> Option<(Qemu, QtestClient, UnixStream)> {
        let binary = qemu_testkit::qemu_system()?;
        let qtest_accel = has_qtest_accel(&binary);
        let (qtest_ours, qtest_theirs) = StdUnixStream::pair().expect("socketpair");
        let (con_ours, con_theirs) = StdUnixStream::pair().expect("socketpair");
        let qtest_theirs = above_stdio(OwnedFd::from(qtest_theirs));
        let con_theirs = above_stdio(OwnedFd::from(con_theirs));

        let qtest_fd = qtest_theirs.as_raw_fd();
        let con_fd = con_theirs.as_raw_fd();
        let mut args: Vec<String> = ["-machine", "pc"].map(String::from).to_vec();
        if qtest_accel {
            args.extend(["-accel", "qtest"].map(String::from));
        } else {
            // No qtest accelerator: keep the CPU stopped so no firmware runs.
            args.extend(["-accel", "tcg", "-S"].map(String::from));
        }
        args.extend([
            "-qtest".to_owned(),
            "chardev:qtest".to_owned(),
            "-chardev".to_owned(),
            format!("socket,id=qtest,fd={qtest_fd}"),
            "-qtest-log".to_owned(),
            "/dev/null".to_owned(),
            "-display".to_owned(),
            "none".to_owned(),
            "-nodefaults".to_owned(),
            "-serial".to_owned(),
            "chardev:con".to_owned(),
            "-chardev".to_owned(),
            format!("socket,id=con,fd={con_fd}"),
        ]);
        let process =
            QemuProcess::spawn(&binary, &args, &[qtest_theirs.as_fd(), con_theirs.as_fd()]);
        // QEMU has its own copies now; ours would hide EOF when it dies.
        drop(qtest_theirs);
        drop(con_theirs);

        let qemu = Qemu {
            process,
            qtest_accel,
        };
        let client = QtestClient::from_std(qtest_ours).expect("qtest client");
        con_ours.set_nonblocking(true).expect("nonblocking");
        let console = UnixStream::from_std(con_ours).expect("console stream");
        // The first command also waits for QEMU to finish starting.
        match client.endianness().await {
            Ok(Endianness::Little) => {}
            other => panic!("QEMU did not answer endianness: {other:?}\n{}", qemu.log()),
        }
        Some((qemu, client, console))
    }

    fn signal(&self, sig: Signal) {
        self.process.signal(sig).expect("signal QEMU");
    }

    fn log(&self) -> String {
        format!("QEMU log:\n{}", self.process.log())
    }

    /// SIGKILL and reap now (also done on drop).
    fn kill(&mut self) {
        self.process.kill_now();
        self.process
            .wait_exit(PROMPT)
            .expect("QEMU still running after SIGKILL");
    }
}

/// Reads from `console` until `expected` bytes arrived (or PROMPT passes).
async fn read_console(console: &mut UnixStream, expected: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + PROMPT;
    let mut buf = [0u8; 256];
    while got.len() < expected {
        match tokio::time::timeout_at(deadline, console.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("console read: {e}"),
        }
    }
    got
}

#[tokio::test]
async fn qemu_outb_to_com1_reaches_the_console() {
    let Some((qemu, c, mut console)) = Qemu::start().await else {
        return;
    };
    let text = b"hello from qtest\n";
    for &b in text {
        c.outb(0x3f8, b).await.unwrap();
    }
    let got = read_console(&mut console, text.len()).await;
    assert_eq!(got, text, "{}", qemu.log());
    // Line status register: transmitter empty, no error.
    let lsr = c.inb(0x3fd).await.unwrap();
    assert_eq!(lsr & 0x60, 0x60, "LSR {lsr:#x}");
}

#[tokio::test]
async fn qemu_clock_step_and_set() {
    let Some((qemu, c, _console)) = Qemu::start().await else {
        return;
    };
    if qemu.qtest_accel {
        let t0 = c.clock_step(0).await.unwrap();
        let t1 = c.clock_step(1000).await.unwrap();
        assert_eq!(t1, t0 + 1000);
        let t2 = c.clock_step(1_000_000).await.unwrap();
        assert_eq!(t2, t1 + 1_000_000);
        assert_eq!(c.clock_set(t2 + 5000).await.unwrap(), t2 + 5000);
        // Setting the clock back does nothing.
        assert_eq!(c.clock_set(0).await.unwrap(), t2 + 5000);
        assert!(c.clock_step_next().await.unwrap() >= t2 + 5000);
    } else {
        // Without the qtest accelerator QEMU does not know the clock commands.
        for r in [
            c.clock_step(1000).await,
            c.clock_step_next().await,
            c.clock_set(1000).await,
        ] {
            match r {
                Err(QtestError::Failed { reason, .. }) => {
                    assert!(reason.starts_with("Unknown command 'clock_"), "{reason}")
                }
                other => panic!("expected FAIL Unknown command, got {other:?}"),
            }
        }
        loud(&format!(
            "SKIPPED: {}: clock arithmetic needs `-accel qtest`, which this QEMU lacks; \
             checked that clock_step/clock_set fail cleanly instead",
            test_name()
        ));
    }
    // The connection is fine either way.
    assert_eq!(c.readb(0x10_0000).await.unwrap(), 0);
}

#[tokio::test]
async fn qemu_read_write_guest_ram() {
    let Some((_qemu, c, _console)) = Qemu::start().await else {
        return;
    };
    let base = 0x10_0000;
    assert_eq!(c.readl(base).await.unwrap(), 0, "fresh RAM is zero");
    c.writel(base, 0xdead_beef).await.unwrap();
    assert_eq!(c.readl(base).await.unwrap(), 0xdead_beef);
    // Little-endian target: the bytes in memory, and narrower reads.
    assert_eq!(c.memread(base, 4).await.unwrap(), [0xef, 0xbe, 0xad, 0xde]);
    assert_eq!(c.readb(base).await.unwrap(), 0xef);
    assert_eq!(c.readw(base + 2).await.unwrap(), 0xdead);
    assert_eq!(c.readq(base).await.unwrap(), 0xdead_beef);

    c.writeb(base + 8, 0x5a).await.unwrap();
    assert_eq!(c.readb(base + 8).await.unwrap(), 0x5a);
    c.writew(base + 10, 0xa55a).await.unwrap();
    assert_eq!(c.readw(base + 10).await.unwrap(), 0xa55a);
    c.writeq(base + 16, 0x0123_4567_89ab_cdef).await.unwrap();
    assert_eq!(c.readq(base + 16).await.unwrap(), 0x0123_4567_89ab_cdef);
    assert_eq!(c.readl(base + 20).await.unwrap(), 0x0123_4567);
}

#[tokio::test]
async fn qemu_memwrite_memread_memset_b64() {
    let Some((_qemu, c, _console)) = Qemu::start().await else {
        return;
    };
    let base = 0x20_0000;
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + i / 256) as u8).collect();
    c.memwrite(base, &data).await.unwrap();
    assert_eq!(c.memread(base, data.len()).await.unwrap(), data);
    assert_eq!(c.b64read(base, data.len()).await.unwrap(), data);
    assert_eq!(c.memread(base + 100, 3).await.unwrap(), &data[100..103]);

    let other: Vec<u8> = data.iter().rev().copied().collect();
    c.b64write(base, &other).await.unwrap();
    assert_eq!(c.memread(base, other.len()).await.unwrap(), other);
    // Odd sizes exercise base64 padding.
    c.b64write(base + 1, &[1, 2]).await.unwrap();
    assert_eq!(
        c.b64read(base, 4).await.unwrap(),
        [other[0], 1, 2, other[3]]
    );

    c.memset(base, 4096, 0xaa).await.unwrap();
    assert_eq!(c.memread(base, 4096).await.unwrap(), vec![0xaa; 4096]);
    c.memset(base + 1, 0, 0x55).await.unwrap();
    assert_eq!(c.readb(base + 1).await.unwrap(), 0xaa, "zero-size memset");
    assert_eq!(c.memread(base, 0).await.unwrap(), Vec::<u8>::new());
    // QEMU is still alive and in step.
    assert_eq!(c.readl(base).await.unwrap(), 0xaaaa_aaaa);
}

#[tokio::test]
async fn qemu_unassigned_ports_and_memory_read_without_error() {
    let Some((_qemu, c, _console)) = Qemu::start().await else {
        return;
    };
    assert_eq!(c.inb(0x1234).await.unwrap(), 0xff);
    assert_eq!(c.inw(0x1234).await.unwrap(), 0xffff);
    assert_eq!(c.inl(0x1234).await.unwrap(), 0xffff_ffff);
    c.outb(0x1234, 0x12).await.unwrap();
    c.outw(0x1234, 0x1234).await.unwrap();
    c.outl(0x1234, 0x1234_5678).await.unwrap();
    // Far beyond RAM: some value, no error.
    let _ = c.readq(0xffff_ffff_0000).await.unwrap();
    let _ = c.memread(0xffff_ffff_0000, 16).await.unwrap();
}

#[tokio::test]
async fn qemu_fail_replies_surface_as_failed() {
    let Some((_qemu, c, _console)) = Qemu::start().await else {
        return;
    };
    match c.cmd("no_such_command 1 2").await {
        Err(QtestError::Failed { command, reason }) => {
            assert_eq!(command, "no_such_command 1 2");
            assert_eq!(reason, "Unknown command 'no_such_command'");
        }
        other => panic!("{other:?}"),
    }
    match c.irq_intercept_in("no-such-device").await {
        Err(QtestError::Failed { reason, .. }) => assert_eq!(reason, "Unknown device"),
        other => panic!("{other:?}"),
    }
    // A line of spaces is an empty command to QEMU, not a crash.
    assert!(matches!(c.cmd(" ").await, Err(QtestError::Failed { .. })));
    // Raw commands work too.
    assert_eq!(c.cmd("endianness").await.unwrap(), "little");
    assert_eq!(c.cmd_reply("inb 0x1234").await.unwrap(), "OK 0x00ff");

    c.irq_intercept_in("ioapic").await.unwrap();
    c.irq_intercept_in("ioapic").await.unwrap(); // same device again: OK
                                                 // Another device (the i440FX host bridge) cannot be intercepted as well.
    match c.irq_intercept_out("/machine/i440fx").await {
        Err(QtestError::Failed { reason, .. }) => {
            assert_eq!(reason, "IRQ intercept already enabled")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.readb(0x10_0000).await.unwrap(), 0);
}

#[tokio::test]
async fn qemu_set_irq_in_is_reported_as_irq_lines() {
    let Some((_qemu, c, _console)) = Qemu::start().await else {
        return;
    };
    c.irq_intercept_in("ioapic").await.unwrap();
    // QEMU writes `IRQ raise 5` before the `OK` of set_irq_in.
    c.set_irq_in("ioapic", UNNAMED_GPIO_IN, 5, 1).await.unwrap();
    assert!(c.get_irq(5));
    c.set_irq_in("ioapic", UNNAMED_GPIO_IN, 5, 1).await.unwrap(); // no change, no line
    c.set_irq_in("ioapic", UNNAMED_GPIO_IN, 5, 0).await.unwrap();
    assert!(!c.get_irq(5));
    c.set_irq_in("ioapic", UNNAMED_GPIO_IN, 11, 1)
        .await
        .unwrap();
    assert_eq!(c.irqs(), vec![raise(5), lower(5), raise(11)]);
    assert!(c.get_irq(11));
    assert_eq!(c.readl(0x10_0000).await.unwrap(), 0);
}

/// Selects CMOS register `reg` and reads it.
async fn rtc_read(c: &QtestClient, reg: u8) -> u8 {
    c.outb(0x70, reg).await.unwrap();
    c.inb(0x71).await.unwrap()
}

async fn rtc_write(c: &QtestClient, reg: u8, value: u8) {
    c.outb(0x70, reg).await.unwrap();
    c.outb(0x71, value).await.unwrap();
}

#[tokio::test]
async fn qemu_rtc_periodic_irq_arrives_between_commands() {
    let Some((qemu, c, _console)) = Qemu::start().await else {
        return;
    };
    // RTC interrupt: ISA IRQ 8, reported as IOAPIC input 8.
    c.irq_intercept_in("ioapic").await.unwrap();
    rtc_read(&c, 0x0c).await; // clear stale flags
    rtc_write(&c, 0x0a, 0x26).await; // 32.768 kHz base, 1024 Hz periodic rate
    rtc_write(&c, 0x0b, 0x42).await; // periodic interrupt enable, 24-hour mode
    if qemu.qtest_accel {
        // In case the RTC runs on the virtual clock, which only qtest moves.
        c.clock_step(10_000_000).await.unwrap();
    }
    // No command is running now: the reader task collects the line.
    c.wait_irq(8, true, PROMPT).await.unwrap();
    assert!(c.get_irq(8));

    // Disabling the interrupt lowers the line; QEMU reports it before the OK.
    rtc_write(&c, 0x0b, 0x02).await;
    assert!(!c.get_irq(8));
    let flags = rtc_read(&c, 0x0c).await;
    assert_eq!(flags & 0x40, 0x40, "periodic flag set: {flags:#x}");
    assert_eq!(c.irqs(), vec![lower(8)]);
    assert_eq!(rtc_read(&c, 0x0c).await & 0x80, 0, "no interrupt request");
}

#[tokio::test]
async fn qemu_timeout_while_stopped_then_recovers() {
    let Some((qemu, c, _console)) = Qemu::start().await else {
        return;
    };
    let addr = 0x30_0000;
    c.writel(addr, 0x1122_3344).await.unwrap();
    c.set_timeout(Duration::from_millis(300));
    qemu.signal(Signal::STOP);
    let start = Instant::now();
    let r = c.readb(addr).await;
    let elapsed = start.elapsed();
    qemu.signal(Signal::CONT);
    assert!(matches!(r, Err(QtestError::Timeout { .. })), "{r:?}");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < PROMPT, "{elapsed:?}");

    // The late `readb` reply (0x44) must not be taken for this one.
    c.set_timeout(PROMPT);
    assert_eq!(c.readl(addr).await.unwrap(), 0x1122_3344);
    assert_eq!(c.readw(addr).await.unwrap(), 0x3344);
}

#[tokio::test]
async fn qemu_killed_gives_closed() {
    let Some((mut qemu, c, _console)) = Qemu::start().await else {
        return;
    };
    c.irq_intercept_in("ioapic").await.unwrap();
    qemu.kill();
    let r = c.readb(0).await;
    assert!(matches!(r, Err(QtestError::Closed)), "{r:?}");
    assert!(c.is_closed());
    let r = c.wait_irq(0, true, PROMPT).await;
    assert!(matches!(r, Err(QtestError::Closed)), "{r:?}");
}

/// The client and its futures can be shared across threads and spawned.
#[allow(dead_code)]
fn client_and_futures_are_send_and_sync(c: &QtestClient) {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    send_sync(c);
    send(&c.cmd("x"));
    send(&c.memwrite(0, &[]));
    send(&c.wait_irq(0, true, PROMPT));
}
