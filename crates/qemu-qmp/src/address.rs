//! Where a QMP peer is: a Unix socket path, a TCP `host:port`, or an already-connected
//! socket (one end of a socketpair, or a descriptor inherited from a parent).

use std::fmt;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// The address of a QMP peer.
///
/// Parse the forms users type with [`str::parse`]:
///
/// | input                     | address                         |
/// |---------------------------|---------------------------------|
/// | `/run/vm1/qmp.sock`       | Unix socket path                |
/// | `unix:/run/vm1/qmp.sock`  | Unix socket path                |
/// | `localhost:4444`          | TCP host and port               |
/// | `tcp:localhost:4444`      | TCP host and port               |
/// | `[::1]:4444`              | TCP, IPv6 literal               |
///
/// As in QEMU's Python `qmp-shell`, a string with exactly one `:` is `host:port`, and a
/// port that is not a number is an error (`QMPBadPortError`); anything else is a path.
///
/// ```
/// use qemu_qmp::Address;
/// let a: Address = "localhost:4444".parse().unwrap();
/// assert_eq!(a, Address::Tcp { host: "localhost".into(), port: 4444 });
/// let b: Address = "/tmp/qmp.sock".parse().unwrap();
/// assert_eq!(b, Address::Unix("/tmp/qmp.sock".into()));
/// assert!("host:port".parse::<Address>().is_err());
/// ```
#[derive(Debug)]
pub enum Address {
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// A TCP host and port.
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// An already-connected Unix stream, e.g. one end of a socketpair.
    UnixStream(UnixStream),
    /// An already-connected TCP stream.
    TcpStream(TcpStream),
}

impl PartialEq for Address {
    /// Paths and host/port pairs compare by value; connected sockets compare by
    /// descriptor number.
    fn eq(&self, other: &Self) -> bool {
        use std::os::fd::AsRawFd;
        match (self, other) {
            (Address::Unix(a), Address::Unix(b)) => a == b,
            (Address::Tcp { host: h1, port: p1 }, Address::Tcp { host: h2, port: p2 }) => {
                h1 == h2 && p1 == p2
            }
            (Address::UnixStream(a), Address::UnixStream(b)) => a.as_raw_fd() == b.as_raw_fd(),
            (Address::TcpStream(a), Address::TcpStream(b)) => a.as_raw_fd() == b.as_raw_fd(),
            _ => false,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::os::fd::AsRawFd;
        match self {
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            Address::UnixStream(s) => write!(f, "unix socket fd {}", s.as_raw_fd()),
            Address::TcpStream(s) => write!(f, "tcp socket fd {}", s.as_raw_fd()),
        }
    }
}

fn bad(input: &str, reason: impl Into<String>) -> Error {
    Error::Address {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

fn parse_port(input: &str, port: &str) -> Result<u16> {
    port.parse::<u16>().map_err(|_| {
        bad(
            input,
            format!("bad port '{port}': not a number from 0 to 65535"),
        )
    })
}

fn parse_tcp(input: &str, rest: &str) -> Result<Address> {
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, port) = v6
            .split_once("]:")
            .ok_or_else(|| bad(input, "an IPv6 address must be written as [ADDR]:PORT"))?;
        return Ok(Address::Tcp {
            host: host.to_owned(),
            port: parse_port(input, port)?,
        });
    }
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad(input, "expected HOST:PORT"))?;
    if host.is_empty() {
        return Err(bad(input, "the host is empty"));
    }
    Ok(Address::Tcp {
        host: host.to_owned(),
        port: parse_port(input, port)?,
    })
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Address> {
        if s.is_empty() {
            return Err(bad(s, "the address is empty"));
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad(s, "the socket path is empty"));
            }
            return Ok(Address::Unix(path.into()));
        }
        if let Some(rest) = s.strip_prefix("tcp:") {
            return parse_tcp(s, rest);
        }
        if s.starts_with('[') {
            return parse_tcp(s, s);
        }
        if s.matches(':').count() == 1 {
            return parse_tcp(s, s);
        }
        Ok(Address::Unix(s.into()))
    }
}

/// Anything that names a QMP peer: an [`Address`], a string in one of the forms
/// [`Address`] parses, a path, a `(host, port)` pair, or a connected socket.
pub trait ToAddress {
    /// Convert, or say why the address is bad.
    fn to_address(self) -> Result<Address>;
}

impl ToAddress for Address {
    fn to_address(self) -> Result<Address> {
        Ok(self)
    }
}

impl ToAddress for &str {
    fn to_address(self) -> Result<Address> {
        self.parse()
    }
}

impl ToAddress for String {
    fn to_address(self) -> Result<Address> {
        self.parse()
    }
}

impl ToAddress for &String {
    fn to_address(self) -> Result<Address> {
        self.parse()
    }
}

impl ToAddress for &Path {
    fn to_address(self) -> Result<Address> {
        Ok(Address::Unix(self.to_owned()))
    }
}

impl ToAddress for PathBuf {
    fn to_address(self) -> Result<Address> {
        Ok(Address::Unix(self))
    }
}

impl ToAddress for &PathBuf {
    fn to_address(self) -> Result<Address> {
        Ok(Address::Unix(self.clone()))
    }
}

impl<H: Into<String>> ToAddress for (H, u16) {
    fn to_address(self) -> Result<Address> {
        Ok(Address::Tcp {
            host: self.0.into(),
            port: self.1,
        })
    }
}

impl ToAddress for UnixStream {
    fn to_address(self) -> Result<Address> {
        Ok(Address::UnixStream(self))
    }
}

impl ToAddress for TcpStream {
    fn to_address(self) -> Result<Address> {
        Ok(Address::TcpStream(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(h: &str, p: u16) -> Address {
        Address::Tcp {
            host: h.into(),
            port: p,
        }
    }

    #[test]
    fn parses_the_forms_users_type() {
        assert_eq!(
            "a.sock".parse::<Address>().unwrap(),
            Address::Unix("a.sock".into())
        );
        assert_eq!(
            "unix:/x:y".parse::<Address>().unwrap(),
            Address::Unix("/x:y".into())
        );
        assert_eq!(
            "127.0.0.1:4444".parse::<Address>().unwrap(),
            tcp("127.0.0.1", 4444)
        );
        assert_eq!("tcp:h:1".parse::<Address>().unwrap(), tcp("h", 1));
        assert_eq!("[::1]:5".parse::<Address>().unwrap(), tcp("::1", 5));
        assert_eq!("tcp:[::1]:5".parse::<Address>().unwrap(), tcp("::1", 5));
        // Python's rule: more than one colon is a path.
        assert_eq!(
            "a:b:c".parse::<Address>().unwrap(),
            Address::Unix("a:b:c".into())
        );
    }

    #[test]
    fn bad_addresses_say_why() {
        let e = "host:port".parse::<Address>().unwrap_err().to_string();
        assert!(e.contains("bad port 'port'"), "{e}");
        assert!("h:70000".parse::<Address>().is_err());
        assert!("".parse::<Address>().is_err());
        assert!("unix:".parse::<Address>().is_err());
        assert!(":80".parse::<Address>().is_err());
        assert!("[::1]".parse::<Address>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in ["/tmp/x.sock", "h:1", "[::1]:2"] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
            assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
        }
    }
}
