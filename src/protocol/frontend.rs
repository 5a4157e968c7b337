//! Frontend (client → server) messages: type bytes and zero-copy views of the bodies the router
//! needs to read.
//!
//! Views borrow from the frame; nothing is allocated or re-encoded. The original bytes are what
//! gets forwarded, so a lossy view (say, non-UTF-8 SQL text) can never alter what a server sees.

use super::{read_i16, read_i32, split_cstr, ProtocolError};

/// Frontend message type bytes.
pub mod tag {
    /// Bind.
    pub const BIND: u8 = b'B';
    /// Close (statement or portal).
    pub const CLOSE: u8 = b'C';
    /// CopyData.
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone.
    pub const COPY_DONE: u8 = b'c';
    /// CopyFail.
    pub const COPY_FAIL: u8 = b'f';
    /// Describe (statement or portal).
    pub const DESCRIBE: u8 = b'D';
    /// Execute.
    pub const EXECUTE: u8 = b'E';
    /// Flush.
    pub const FLUSH: u8 = b'H';
    /// FunctionCall (used by libpq's large-object API).
    pub const FUNCTION_CALL: u8 = b'F';
    /// Parse.
    pub const PARSE: u8 = b'P';
    /// PasswordMessage, SASLInitialResponse and SASLResponse share this byte.
    pub const PASSWORD: u8 = b'p';
    /// Query (simple protocol).
    pub const QUERY: u8 = b'Q';
    /// Sync.
    pub const SYNC: u8 = b'S';
    /// Terminate.
    pub const TERMINATE: u8 = b'X';
}

/// Whether `t` is a frontend message type causeway knows. Unknown types are a protocol violation.
pub fn is_known_tag(t: u8) -> bool {
    matches!(
        t,
        tag::BIND
            | tag::CLOSE
            | tag::COPY_DATA
            | tag::COPY_DONE
            | tag::COPY_FAIL
            | tag::DESCRIBE
            | tag::EXECUTE
            | tag::FLUSH
            | tag::FUNCTION_CALL
            | tag::PARSE
            | tag::PASSWORD
            | tag::QUERY
            | tag::SYNC
            | tag::TERMINATE
    )
}

/// The SQL text of a Query message (without its terminator).
pub fn query_text(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let (text, rest) = split_cstr(body, "Query")?;
    if !rest.is_empty() {
        return Err(ProtocolError::malformed(
            "Query",
            "bytes after the query string",
        ));
    }
    Ok(text)
}

/// A view of a Parse message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Prepared statement name; empty for the unnamed statement.
    pub name: &'a [u8],
    /// The SQL text.
    pub query: &'a [u8],
    /// Number of parameter type OIDs that follow.
    pub param_types: i16,
}

/// Reads a Parse body.
pub fn parse(body: &[u8]) -> Result<Parse<'_>, ProtocolError> {
    const WHAT: &str = "Parse";
    let (name, rest) = split_cstr(body, WHAT)?;
    let (query, rest) = split_cstr(rest, WHAT)?;
    let (n, rest) = read_i16(rest, WHAT)?;
    if n < 0 || rest.len() != n as usize * 4 {
        return Err(ProtocolError::malformed(WHAT, "bad parameter type list"));
    }
    Ok(Parse {
        name,
        query,
        param_types: n,
    })
}

/// A view of the names in a Bind message (parameter values are never looked at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal; empty for the unnamed portal.
    pub portal: &'a [u8],
    /// Source prepared statement; empty for the unnamed statement.
    pub statement: &'a [u8],
}

/// Reads the portal and statement names of a Bind body.
pub fn bind(body: &[u8]) -> Result<Bind<'_>, ProtocolError> {
    let (portal, rest) = split_cstr(body, "Bind")?;
    let (statement, _) = split_cstr(rest, "Bind")?;
    Ok(Bind { portal, statement })
}

/// What a Describe or Close message targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A prepared statement (`S`).
    Statement(&'a [u8]),
    /// A portal (`P`).
    Portal(&'a [u8]),
}

/// Reads a Describe or Close body.
pub fn describe_or_close(body: &[u8]) -> Result<Target<'_>, ProtocolError> {
    const WHAT: &str = "Describe/Close";
    let (&kind, rest) = body
        .split_first()
        .ok_or(ProtocolError::malformed(WHAT, "empty"))?;
    let (name, rest) = split_cstr(rest, WHAT)?;
    if !rest.is_empty() {
        return Err(ProtocolError::malformed(WHAT, "bytes after the name"));
    }
    match kind {
        b'S' => Ok(Target::Statement(name)),
        b'P' => Ok(Target::Portal(name)),
        _ => Err(ProtocolError::malformed(
            WHAT,
            "kind is neither 'S' nor 'P'",
        )),
    }
}

/// A view of an Execute message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execute<'a> {
    /// Portal to run; empty for the unnamed portal.
    pub portal: &'a [u8],
    /// Row limit; 0 means all rows.
    pub max_rows: i32,
}

/// Reads an Execute body.
pub fn execute(body: &[u8]) -> Result<Execute<'_>, ProtocolError> {
    let (portal, rest) = split_cstr(body, "Execute")?;
    let (max_rows, _) = read_i32(rest, "Execute")?;
    Ok(Execute { portal, max_rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_views() {
        assert_eq!(query_text(b"select 1\0").unwrap(), b"select 1");
        assert!(query_text(b"select 1").is_err());
        assert!(query_text(b"a\0b").is_err());

        let p = parse(b"s1\0select $1\0\0\x01\0\0\0\x17").unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.query, b"select $1");
        assert_eq!(p.param_types, 1);
        assert!(parse(b"s1\0select\0\0\x02\0\0\0\x17").is_err());
        assert!(parse(b"s1\0select\0\xff\xff").is_err());

        let b = bind(b"p\0s1\0\0\0\0\0\0\0").unwrap();
        assert_eq!((b.portal, b.statement), (&b"p"[..], &b"s1"[..]));

        assert_eq!(
            describe_or_close(b"Sabc\0").unwrap(),
            Target::Statement(b"abc")
        );
        assert_eq!(describe_or_close(b"P\0").unwrap(), Target::Portal(b""));
        assert!(describe_or_close(b"X\0").is_err());
        assert!(describe_or_close(b"").is_err());

        let e = execute(b"\0\0\0\0\x05").unwrap();
        assert_eq!((e.portal, e.max_rows), (&b""[..], 5));
        assert!(execute(b"\0\0").is_err());
    }

    #[test]
    fn never_panics_on_prefixes() {
        let samples: [&[u8]; 4] = [
            b"s1\0select $1\0\0\x01\0\0\0\x17",
            b"p\0s1\0\0\0\0\0\0\0",
            b"Sabc\0",
            b"\0\0\0\0\x05",
        ];
        for s in samples {
            for cut in 0..s.len() {
                let b = &s[..cut];
                let _ = (
                    query_text(b),
                    parse(b),
                    bind(b),
                    describe_or_close(b),
                    execute(b),
                );
            }
        }
    }
}
