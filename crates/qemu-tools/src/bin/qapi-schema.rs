//! `qapi-schema`: a QEMU's QAPI schema, as its QMP monitor describes it
//! (`query-qmp-schema`): record it (`dump`), compare two (`diff`), show a
//! command's or an event's arguments and return (`show`), check commands
//! against it before they reach a QEMU (`check`), and generate typed Rust
//! from several (`gen`).

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use qemu_machine::QemuMachine;
use qemu_qapi::{describe, diff, Featured, Member, Meta, Recording, Schema, SchemaInfo};
use qemu_qmp::{Address, Client};
use qemu_tools::exit;

const INTRO: &str = "\
Sources: a recording is the file `dump` writes (qemu-qapi's format, as in
crates/qemu-qapi/schemas/); --socket asks a running QEMU; --binary starts the
program (qemu-system-* with `-machine none -S`, qemu-storage-daemon as it is),
asks it, and stops it.";

const DIFF_HELP: &str = "\
`diff` exits 0 whether or not the schemas differ: it is a report. A file that
cannot be read or is not a recording is a failure (1).";

const CHECK_HELP: &str = "\
`check` prints one line per rejected command (FILE:LINE: the command, the path
of the problem and what is wrong, as QEMU's input checks would see it) and
exits 1 if any was rejected or a line is not a JSON object (and says how many on
stderr), 0 if all pass (printing nothing).";

/// Record, compare and show QEMU's QAPI schemas.
#[derive(Debug, Parser)]
#[command(
    name = "qapi-schema",
    version,
    after_help = exit::after_help(INTRO, DIFF_HELP)
)]
struct Cli {
    /// Seconds to wait for QEMU: to start or connect, and for each reply.
    #[arg(long, short = 't', global = true, default_value = "30", value_name = "SECONDS",
          value_parser = exit::parse_seconds)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the schema recording of a running QEMU or of a QEMU binary.
    Dump {
        #[command(flatten)]
        live: Live,
        /// Write the recording into DIR as `<binary>-<version>.json` (the
        /// layout of crates/qemu-qapi/schemas) and print its path, instead
        /// of printing it.
        #[arg(long, value_name = "DIR")]
        into: Option<PathBuf>,
    },
    /// Compare two schema recordings: what changed from OLD to NEW, one line per
    /// change, grouped (commands, events, types).
    #[command(after_help = DIFF_HELP)]
    Diff {
        /// Print the changes as JSON (`{"old":..., "new":..., "changes": [...]}`).
        #[arg(long)]
        json: bool,
        /// The older recording.
        #[arg(value_name = "OLD")]
        old: PathBuf,
        /// The newer recording.
        #[arg(value_name = "NEW")]
        new: PathBuf,
    },
    /// Check commands, one JSON object a line (`{"execute": ..., "arguments":
    /// ...}`; blank lines and lines starting with `#` are skipped), against a
    /// schema, as QEMU's own argument checks would, before any reaches QEMU.
    #[command(after_help = CHECK_HELP)]
    Check {
        /// The file of commands (`-`: standard input).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        source: Source,
    },
    /// Generate typed Rust for the commands, events and types of several
    /// schemas (recordings and programs): `types.rs`, `commands.rs`,
    /// `events.rs` and `names.json` in DIR, as in crates/qemu-qapi-types. A
    /// names.json already in DIR keeps the names it gave.
    Gen {
        /// Schema recordings (what `dump` writes).
        #[arg(value_name = "RECORDING")]
        recordings: Vec<PathBuf>,
        /// A QEMU program to start and ask as well (repeat for several).
        #[arg(long, short = 'b', value_name = "QEMU_BINARY")]
        binary: Vec<PathBuf>,
        /// The directory to write to.
        #[arg(long, short = 'o', value_name = "DIR")]
        out: PathBuf,
    },
    /// Show a command's arguments and return, or an event's data: members
    /// (nested objects indented), their types as JSON types, enum values or
    /// union variants, `optional` and features.
    Show {
        /// The command or event.
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        source: Source,
    },
}

/// A live QEMU.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Live {
    /// The QMP socket path or address (host:port) of a running QEMU.
    #[arg(long, short = 's', value_name = "SOCKET")]
    socket: Option<String>,
    /// A QEMU program to start, ask and stop (qemu-system-* or qemu-storage-daemon).
    #[arg(long, short = 'b', value_name = "QEMU_BINARY")]
    binary: Option<PathBuf>,
}

/// A recording or a live QEMU.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Source {
    /// A schema recording (what `dump` writes).
    #[arg(long, value_name = "FILE")]
    schema: Option<PathBuf>,
    /// The QMP socket path or address (host:port) of a running QEMU.
    #[arg(long, short = 's', value_name = "SOCKET")]
    socket: Option<String>,
    /// A QEMU program to start, ask and stop.
    #[arg(long, short = 'b', value_name = "QEMU_BINARY")]
    binary: Option<PathBuf>,
}

type BoxError = Box<dyn std::error::Error>;

const PREFIX: &str = "qapi-schema: ";

/// Where a live schema comes from, checked before anything starts.
enum LiveSource {
    Socket(Address),
    Binary(PathBuf),
}

fn live_source(socket: Option<&str>, binary: Option<&Path>) -> Option<LiveSource> {
    if let Some(s) = socket {
        if s.is_empty() {
            exit::usage_error::<Cli>("--socket: empty address")
        }
        return Some(LiveSource::Socket(exit::parse_address::<Cli>(s)));
    }
    binary.map(|b| LiveSource::Binary(b.to_owned()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dump { live, into } => {
            let source = live_source(live.socket.as_deref(), live.binary.as_deref())
                .unwrap_or_else(|| exit::usage_error::<Cli>("--socket or --binary is needed"));
            fetch(source, cli.timeout).and_then(|r| {
                r.schema()?; // a recording that reads back
                match &into {
                    None => write_out(&r.to_json()),
                    Some(dir) => {
                        let path = dir.join(r.file_name()?);
                        std::fs::write(&path, r.to_json())
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                        write_out(&format!("{}\n", path.display()))
                    }
                }
            })
        }
        Command::Diff { json, old, new } => run_diff(&old, &new, json),
        Command::Check { file, source } => {
            match source_recording(&source, cli.timeout).and_then(|r| run_check(&r, &file)) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(exit::FAILURE),
                Err(e) => Err(e),
            }
        }
        Command::Gen {
            recordings,
            binary,
            out,
        } => run_gen(&recordings, &binary, &out, cli.timeout),
        Command::Show { name, source } => {
            let recording = source_recording(&source, cli.timeout);
            recording.and_then(|r| {
                let schema = r.schema()?;
                let text = show(&schema, &name)
                    .ok_or_else(|| format!("no command or event {name} in this schema"))?;
                write_out(&text)
            })
        }
    };
    match result {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        Err(e) => {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                if io.kind() == io::ErrorKind::BrokenPipe {
                    return ExitCode::from(exit::SUCCESS);
                }
            }
            exit::fail_with(PREFIX, e.as_ref())
        }
    }
}

/// The recording a `--schema`/`--socket`/`--binary` source names.
fn source_recording(source: &Source, timeout: Duration) -> Result<Recording, BoxError> {
    match live_source(source.socket.as_deref(), source.binary.as_deref()) {
        Some(live) => fetch(live, timeout),
        None => {
            let path = source.schema.as_deref().expect("clap requires one source");
            load(path).map(|(r, _)| r)
        }
    }
}

/// Checks every command of `file` against `recording`'s schema, printing one line
/// per rejected command; true if all passed.
fn run_check(recording: &Recording, file: &Path) -> Result<bool, BoxError> {
    let schema = recording.schema()?;
    let text = if file == Path::new("-") {
        io::read_to_string(io::stdin()).map_err(|e| format!("standard input: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?
    };
    let shown = file.display();
    let mut out = String::new();
    let (mut checked, mut rejected) = (0usize, 0usize);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        checked += 1;
        let verdict = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(request)) => {
                schema.check_command(&request).map_err(|e| e.to_string())
            }
            Ok(_) => Err("not a JSON object".to_owned()),
            Err(e) => Err(format!("not JSON: {e}")),
        };
        if let Err(why) = verdict {
            rejected += 1;
            out.push_str(&format!("{shown}:{}: {why}\n", i + 1));
        }
    }
    write_out(&out)?;
    if rejected > 0 {
        eprintln!("{rejected} of {checked} commands rejected");
    }
    Ok(rejected == 0)
}

fn write_out(text: &str) -> Result<(), BoxError> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// A recording file, read and parsed; errors name the file.
fn load(path: &Path) -> Result<(Recording, Schema), BoxError> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(&e))?;
    let r = Recording::from_json(&text).map_err(|e| at(&e))?;
    let s = r.schema().map_err(|e| at(&e))?;
    Ok((r, s))
}

fn run_diff(old: &Path, new: &Path, json: bool) -> Result<(), BoxError> {
    let (ro, so) = load(old)?;
    let (rn, sn) = load(new)?;
    let d = diff(&so, &sn);
    if json {
        let about = |r: &Recording, s: &Schema, p: &Path| {
            serde_json::json!({
                "file": p.display().to_string(),
                "binary": r.binary,
                "version": s.version().map(|v| v.to_string()),
            })
        };
        let mut v = d.to_json();
        v["old"] = about(&ro, &so, old);
        v["new"] = about(&rn, &sn, new);
        let mut text = serde_json::to_string_pretty(&v)?;
        text.push('\n');
        write_out(&text)
    } else {
        write_out(&d.to_string())
    }
}

// ---------------------------------------------------------------------------
// gen: typed Rust

fn run_gen(
    files: &[PathBuf],
    binaries: &[PathBuf],
    out: &Path,
    timeout: Duration,
) -> Result<(), BoxError> {
    if files.is_empty() && binaries.is_empty() {
        exit::usage_error::<Cli>("gen: name at least one RECORDING or --binary")
    }
    let mut recordings = Vec::new();
    for f in files {
        recordings.push(load(f)?.0);
    }
    for b in binaries {
        recordings.push(fetch(LiveSource::Binary(b.clone()), timeout)?);
    }
    let names_path = out.join("names.json");
    let names = match std::fs::read_to_string(&names_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", names_path.display()).into()),
    };
    let generated = qemu_qapi::codegen::generate(&recordings, names.as_deref())?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (name, text) in &generated.files {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let (commands, events, types) = generated.counts;
    eprintln!(
        "{}: {commands} commands, {events} events, {types} types from {} schemas",
        out.display(),
        recordings.len()
    );
    for c in &generated.conflicts {
        eprintln!("note: {c}: its type differs between versions; it is plain JSON");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// dump: a live schema

fn fetch(source: LiveSource, timeout: Duration) -> Result<Recording, BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async {
        match source {
            LiveSource::Socket(address) => fetch_socket(address, timeout).await,
            LiveSource::Binary(path) => {
                let kind = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| format!("{}: no file name", path.display()))?
                    .to_owned();
                if kind.starts_with("qemu-storage-daemon") {
                    fetch_storage_daemon(&path, &kind, timeout).await
                } else {
                    fetch_system(&path, &kind, timeout).await
                }
                .map_err(|e| format!("{}: {}", path.display(), exit::one_line(e.as_ref())).into())
            }
        }
    })
}

async fn fetch_socket(address: Address, timeout: Duration) -> Result<Recording, BoxError> {
    let client = Client::builder()
        .name("qapi-schema")
        .connect_timeout(timeout)
        .command_timeout(timeout)
        .connect(address)
        .await?;
    let result = async {
        let mut r = Recording::fetch(&client, "").await?;
        // The program is not known from a socket: a system emulator says its
        // target, the storage daemon has no query-target.
        let schema = r.schema()?;
        r.binary = if schema.has_command("query-target") {
            let target = client.execute("query-target", None).await?;
            let arch = target["arch"].as_str().unwrap_or("unknown");
            format!("qemu-system-{arch}")
        } else {
            "qemu-storage-daemon".to_owned()
        };
        Ok::<_, BoxError>(r)
    }
    .await;
    let _ = client.disconnect().await;
    result
}

/// `qemu-system-*`, with `-machine none -S`, by QemuMachine: it leaves no
/// process behind on any path.
async fn fetch_system(path: &Path, kind: &str, timeout: Duration) -> Result<Recording, BoxError> {
    let vm = QemuMachine::builder(path)
        .name("qapi-schema")
        .machine_type("none")
        .nodefaults()
        .args(["-S"])
        .accept_timeout(timeout)
        .shutdown_timeout(timeout)
        .launch()
        .await?;
    let fetched = tokio::time::timeout(timeout, Recording::fetch(vm.qmp(), kind)).await;
    let shutdown = vm.shutdown().await;
    let recording = fetched.map_err(|_| "no answer from QEMU: timed out")??;
    shutdown?;
    Ok(recording)
}

/// `qemu-storage-daemon`, its monitor on a socketpair: it dies with this process
/// (`PR_SET_PDEATHSIG`), and is killed and reaped on every failure.
async fn fetch_storage_daemon(
    path: &Path,
    kind: &str,
    timeout: Duration,
) -> Result<Recording, BoxError> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs = qemu_process::above_stdio(theirs.into())?;
    let chardev = format!("socket,id=qmp,fd={}", theirs.as_raw_fd());
    let mut cmd = std::process::Command::new(path);
    cmd.args(["--chardev", &chardev, "--monitor", "chardev=qmp"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut spawn = qemu_process::Spawn::new(cmd);
    spawn.inherit_owned(theirs);
    let mut child = spawn.spawn()?;
    let result = async {
        let qmp = Client::builder()
            .name("qapi-schema")
            .connect_timeout(timeout)
            .command_timeout(timeout)
            .connect(ours)
            .await?;
        let recording = Recording::fetch(&qmp, kind).await?;
        let _ = qmp.execute("quit", None).await;
        let _ = qmp.disconnect().await;
        Ok::<_, BoxError>(recording)
    }
    .await;
    // Wait for the exit after quit; kill it after the timeout or on failure.
    let deadline = Instant::now() + timeout;
    if result.is_ok() {
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let _ = child.kill();
    let output = child.wait_with_output()?;
    match result {
        Ok(r) => Ok(r),
        Err(e) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            match stderr.lines().rfind(|l| !l.trim().is_empty()) {
                Some(line) => Err(format!("{}: {line}", exit::one_line(e.as_ref())).into()),
                None => Err(e),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// show

/// The text of `show NAME`, or None if the schema has no such command or
/// event.
fn show(schema: &Schema, name: &str) -> Option<String> {
    let mut out = String::new();
    if let Some(c) = schema.command(name) {
        let cmd = c.as_command()?;
        out += &format!("command {name}{}\n", flags(false, c.features()));
        part(schema, "arguments", &cmd.arg_type, &mut out);
        part(schema, "return", &cmd.ret_type, &mut out);
    } else {
        let e = schema.event(name)?;
        out += &format!("event {name}{}\n", flags(false, e.features()));
        part(schema, "data", &e.as_event()?.arg_type, &mut out);
    }
    Some(out)
}

fn part(schema: &Schema, label: &str, type_name: &str, out: &mut String) {
    let Some(t) = schema.get(type_name) else {
        *out += &format!("{label}: ? (type {type_name} not in the schema)\n");
        return;
    };
    if t.as_object()
        .is_some_and(|o| o.members.is_empty() && o.variants.is_empty())
    {
        *out += &format!("{label}: none\n");
        return;
    }
    *out += &format!("{label}: {}\n", label_of(schema, t));
    let mut stack = Vec::new();
    nested(schema, t, 1, &mut stack, out);
}

/// ` (optional, deprecated)`, or nothing.
fn flags(optional: bool, features: &[String]) -> String {
    let mut f: Vec<&str> = Vec::new();
    if optional {
        f.push("optional");
    }
    f.extend(features.iter().map(String::as_str));
    if f.is_empty() {
        String::new()
    } else {
        format!(" ({})", f.join(", "))
    }
}

/// A type on one line: its JSON type (with the builtin's name where it says
/// more, `int (uint8)`), `enum: a | b`, `array of ...`, `object`,
/// `alternate: string | object`.
fn label_of(schema: &Schema, t: &SchemaInfo) -> String {
    label_depth(schema, t, 0)
}

fn label_depth(schema: &Schema, t: &SchemaInfo, depth: usize) -> String {
    match &t.meta {
        Meta::Builtin(b) => {
            if b.json_type == t.name
                || matches!(
                    (t.name.as_str(), b.json_type.as_str()),
                    ("str", "string") | ("bool", "boolean") | ("any", "value")
                )
            {
                b.json_type.clone()
            } else {
                format!("{} ({})", b.json_type, t.name)
            }
        }
        Meta::Enum(e) => {
            let values: Vec<String> = e
                .members
                .iter()
                .map(|v| format!("{}{}", v.name, flags(false, v.features())))
                .collect();
            format!("enum: {}", values.join(" | "))
        }
        Meta::Array(a) => match schema.get(&a.element_type) {
            Some(e) if depth < 8 => format!("array of {}", label_depth(schema, e, depth + 1)),
            _ => "array".to_owned(),
        },
        Meta::Alternate(a) => {
            let branches: Vec<String> = a
                .members
                .iter()
                .filter_map(|m| schema.get(&m.type_name))
                .map(|b| describe(schema, b))
                .collect();
            format!("alternate: {}", branches.join(" | "))
        }
        _ => describe(schema, t),
    }
}

/// What is inside `t`, indented by `level`: an object's members and
/// variants, an array's elements', an alternate's object branches.
fn nested<'a>(
    schema: &'a Schema,
    t: &'a SchemaInfo,
    level: usize,
    stack: &mut Vec<&'a str>,
    out: &mut String,
) {
    let pad = "  ".repeat(level);
    if stack.contains(&t.name.as_str()) {
        *out += &format!("{pad}... (recursive: the object above)\n");
        return;
    }
    if stack.len() > 32 {
        return;
    }
    match &t.meta {
        Meta::Object(o) => {
            stack.push(&t.name);
            for m in &o.members {
                member(schema, m, level, stack, out);
            }
            for v in &o.variants {
                let tag = o.tag.as_deref().unwrap_or("?");
                match schema.get(&v.type_name) {
                    Some(vt)
                        if vt
                            .as_object()
                            .is_some_and(|x| !x.members.is_empty() || !x.variants.is_empty()) =>
                    {
                        *out += &format!("{pad}when {tag} = {}:\n", v.case);
                        nested(schema, vt, level + 1, stack, out);
                    }
                    _ => *out += &format!("{pad}when {tag} = {}: nothing more\n", v.case),
                }
            }
            stack.pop();
        }
        Meta::Array(a) => {
            if let Some(e) = schema.get(&a.element_type) {
                nested(schema, e, level, stack, out);
            }
        }
        Meta::Alternate(a) => {
            for b in a.members.iter().filter_map(|m| schema.get(&m.type_name)) {
                if stack.contains(&b.name.as_str()) {
                    *out += &format!(
                        "{pad}as {}: the object above (recursive)\n",
                        describe(schema, b)
                    );
                } else if matches!(b.meta, Meta::Object(_) | Meta::Array(_)) {
                    *out += &format!("{pad}as {}:\n", describe(schema, b));
                    nested(schema, b, level + 1, stack, out);
                }
            }
        }
        _ => {}
    }
}

fn member<'a>(
    schema: &'a Schema,
    m: &'a Member,
    level: usize,
    stack: &mut Vec<&'a str>,
    out: &mut String,
) {
    let pad = "  ".repeat(level);
    let Some(t) = schema.type_of(m) else {
        *out += &format!(
            "{pad}{}: ?{}\n",
            m.name,
            flags(m.is_optional(), m.features())
        );
        return;
    };
    *out += &format!(
        "{pad}{}: {}{}\n",
        m.name,
        label_of(schema, t),
        flags(m.is_optional(), m.features())
    );
    nested(schema, t, level + 1, stack, out);
}
