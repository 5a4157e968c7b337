//! A hand-written SQL tokenizer that follows PostgreSQL's own scanner (`scan.l`) closely enough
//! to find statement boundaries, keywords, names and parentheses, and nothing more.
//!
//! Why not a real parser: the classifier runs on every query on the proxy's hot path, so it must
//! be allocation-free and fast; and it only has to answer "may this run on a standby?", where
//! every doubt resolves to "no". What it must get exactly right is *where text is not SQL*:
//! string literals (`'…'`, `E'…'` with backslash escapes, `U&'…'`, `B'…'`, `X'…'`, `N'…'`),
//! dollar quotes (`$$…$$`, `$tag$…$tag$`, but `$1` is a parameter), quoted identifiers
//! (`"select"` is a name, `"a""b"` has a quote in it), `--` comments and nested `/* /* */ */`
//! comments. A `;` or an `INSERT` inside any of those must never be seen as SQL.
//!
//! Tokens borrow from the input; the lexer never allocates and never panics, whatever the bytes.
//! Anything PostgreSQL's scanner would reject (an unterminated literal or comment, a byte that
//! starts no token, an empty quoted identifier) comes out as one [`TokenKind::Error`] token,
//! after which the lexer yields nothing more: the classifier treats the request as unknown.
//!
//! The lexer also holds PostgreSQL's keyword list (sorted tables in `lexer/keywords.rs`, with
//! PostgreSQL 18's categories), because whether `word(` is a function call depends on whether
//! `word` is a reserved or column-name keyword.

mod keywords;

pub use keywords::{
    keyword_category, KeywordCategory, COL_NAME_KEYWORDS, RESERVED_KEYWORDS,
    TYPE_FUNC_NAME_KEYWORDS, UNRESERVED_KEYWORDS,
};

/// What kind of token a [`Token`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An unquoted identifier or keyword (`select`, `pg_catalog`, `my_table`, `é`).
    Word,
    /// A double-quoted identifier (`"Select"`, `"a""b"`, `U&"d\0061t"`), quotes included.
    QuotedIdent,
    /// A string literal in any of its forms (`'x'`, `E'x'`, `U&'x'`, `B'0'`, `X'f'`, `N'x'`),
    /// prefix and quotes included.
    String,
    /// A dollar-quoted string (`$$x$$`, `$fn$x$fn$`), delimiters included.
    DollarString,
    /// A numeric literal (`1`, `1.5e-3`, `0x1F`, `1_000`).
    Number,
    /// A positional parameter (`$1`).
    Param,
    /// An operator (`=`, `<>`, `||`, `->>`, `:=`, `=>`, …).
    Operator,
    /// The cast operator `::`.
    Cast,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `[`
    LBracket,
    /// `]`
    RBracket,
    /// `,`
    Comma,
    /// `;`, the statement separator.
    Semicolon,
    /// `.`
    Dot,
    /// `:` alone (array slices).
    Colon,
    /// Something PostgreSQL's scanner would reject; always the last token.
    Error,
}

/// One token: its kind, its text (a slice of the input) and where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    /// What the token is.
    pub kind: TokenKind,
    /// The token's bytes, exactly as written (quotes and prefixes included).
    pub text: &'a [u8],
    /// Byte offset of the token's first byte in the input.
    pub offset: usize,
}

impl Token<'_> {
    /// Byte offset just past the token's last byte.
    pub fn end(&self) -> usize {
        self.offset + self.text.len()
    }

    /// Whether this is the unquoted word `keyword` (ASCII case-insensitive; `keyword` is
    /// lower case).
    #[inline]
    pub fn is_word(&self, keyword: &str) -> bool {
        self.kind == TokenKind::Word && self.text.eq_ignore_ascii_case(keyword.as_bytes())
    }

    /// Whether this token is a name: a word or a quoted identifier.
    #[inline]
    pub fn is_name(&self) -> bool {
        matches!(self.kind, TokenKind::Word | TokenKind::QuotedIdent)
    }

    /// Whether this token is a constant: a string, dollar string, number or parameter.
    #[inline]
    pub fn is_literal(&self) -> bool {
        matches!(
            self.kind,
            TokenKind::String | TokenKind::DollarString | TokenKind::Number | TokenKind::Param
        )
    }
}

/// Lexer settings that change how bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LexOptions {
    /// Read backslashes in plain `'…'` strings as escapes, as a server with
    /// `standard_conforming_strings = off` does. Off by default (PostgreSQL's default since
    /// 9.1); the classifier re-reads a request in this mode only when the two readings could
    /// differ (see [`Lexer::saw_ambiguous_backslash`]).
    pub backslash_escapes: bool,
}

/// Iterator over the tokens of an SQL text. Whitespace and comments are skipped.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    /// The whole input.
    src: &'a [u8],
    /// Offset of the next byte to read; `src.len()` once finished (also after an error).
    pos: usize,
    /// How to read plain strings.
    options: LexOptions,
    /// Set when a plain string had a backslash right before a quote, the one place where
    /// `standard_conforming_strings` changes where the string ends.
    ambiguous_backslash: bool,
}

impl<'a> Lexer<'a> {
    /// A lexer over `src` with the default options.
    pub fn new(src: &'a [u8]) -> Self {
        Self::with_options(src, LexOptions::default())
    }

    /// A lexer over `src` with the given options.
    pub fn with_options(src: &'a [u8], options: LexOptions) -> Self {
        Lexer {
            src,
            pos: 0,
            options,
            ambiguous_backslash: false,
        }
    }

    /// The input this lexer reads.
    pub fn source(&self) -> &'a [u8] {
        self.src
    }

    /// Offset of the next unread byte (comments and whitespace not yet skipped).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Whether a plain `'…'` string so far contained a backslash directly before a quote.
    /// Under `standard_conforming_strings = off` such a string would end elsewhere, so the
    /// rest of the text would be read differently.
    pub fn saw_ambiguous_backslash(&self) -> bool {
        self.ambiguous_backslash
    }

    /// Reads the next token, or `None` at the end of the input (or after an error token).
    pub fn next_token(&mut self) -> Option<Token<'a>> {
        if let Err(at) = self.skip_trivia() {
            return Some(self.error_from(at));
        }
        let start = self.pos;
        let &first = self.src.get(start)?;
        let kind = match first {
            b'(' => self.single(TokenKind::LParen),
            b')' => self.single(TokenKind::RParen),
            b'[' => self.single(TokenKind::LBracket),
            b']' => self.single(TokenKind::RBracket),
            b',' => self.single(TokenKind::Comma),
            b';' => self.single(TokenKind::Semicolon),
            b':' => match self.byte_at(start + 1) {
                Some(b':') => {
                    self.pos += 2;
                    TokenKind::Cast
                }
                Some(b'=') => {
                    self.pos += 2;
                    TokenKind::Operator
                }
                _ => self.single(TokenKind::Colon),
            },
            b'.' => match self.byte_at(start + 1) {
                Some(b'0'..=b'9') => self.number(),
                _ => self.single(TokenKind::Dot),
            },
            b'0'..=b'9' => self.number(),
            b'\'' => self.quoted_string(start + 1, self.options.backslash_escapes, true),
            b'"' => self.quoted_ident(start + 1),
            b'$' => self.dollar(),
            b if is_op_char(b) => self.operator(),
            b if is_ident_start(b) => self.word_or_prefixed_literal(),
            _ => TokenKind::Error,
        };
        if kind == TokenKind::Error {
            return Some(self.error_from(start));
        }
        Some(Token {
            kind,
            text: &self.src[start..self.pos],
            offset: start,
        })
    }

    /// The error token from `at` to the end; the lexer is finished afterwards.
    fn error_from(&mut self, at: usize) -> Token<'a> {
        let at = at.min(self.src.len());
        self.pos = self.src.len();
        Token {
            kind: TokenKind::Error,
            text: &self.src[at..],
            offset: at,
        }
    }

    #[inline]
    fn byte_at(&self, i: usize) -> Option<u8> {
        self.src.get(i).copied()
    }

    #[inline]
    fn single(&mut self, kind: TokenKind) -> TokenKind {
        self.pos += 1;
        kind
    }

    /// Skips whitespace and comments. `Err(offset)` for an unterminated block comment.
    fn skip_trivia(&mut self) -> Result<(), usize> {
        loop {
            match self.byte_at(self.pos) {
                Some(b) if is_space(b) => self.pos += 1,
                Some(b'-') if self.byte_at(self.pos + 1) == Some(b'-') => {
                    self.pos = line_comment_end(self.src, self.pos);
                }
                Some(b'/') if self.byte_at(self.pos + 1) == Some(b'*') => {
                    let start = self.pos;
                    match block_comment_end(self.src, start) {
                        Some(end) => self.pos = end,
                        None => return Err(start),
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// A numeric literal. PostgreSQL 16 rejects trailing letters ("trailing junk"); reading
    /// them into the number is harmless here because numbers never decide anything.
    fn number(&mut self) -> TokenKind {
        self.pos = number_end(self.src, self.pos);
        TokenKind::Number
    }

    /// A string whose body starts at `body`. With `backslash` set, `\` escapes the next byte
    /// (E'' strings, or plain strings when `standard_conforming_strings` is off). `plain`
    /// marks strings whose reading depends on `standard_conforming_strings`.
    fn quoted_string(&mut self, body: usize, backslash: bool, plain: bool) -> TokenKind {
        let mut i = body;
        loop {
            match self.src.get(i) {
                None => return TokenKind::Error,
                Some(b'\'') => {
                    if self.byte_at(i + 1) == Some(b'\'') {
                        i += 2; // '' is a quote inside the string
                    } else {
                        self.pos = i + 1;
                        return TokenKind::String;
                    }
                }
                Some(b'\\') if backslash => i += 2,
                Some(b'\\') => {
                    if plain && self.byte_at(i + 1) == Some(b'\'') {
                        self.ambiguous_backslash = true;
                    }
                    i += 1;
                }
                Some(_) => i += 1,
            }
        }
    }

    /// A quoted identifier whose body starts at `body`; `""` is a quote inside it. An empty
    /// one is an error in PostgreSQL ("zero-length delimited identifier").
    fn quoted_ident(&mut self, body: usize) -> TokenKind {
        let mut i = body;
        loop {
            match self.src.get(i) {
                None => return TokenKind::Error,
                Some(b'"') => {
                    if self.byte_at(i + 1) == Some(b'"') {
                        i += 2;
                    } else {
                        if i == body {
                            return TokenKind::Error;
                        }
                        self.pos = i + 1;
                        return TokenKind::QuotedIdent;
                    }
                }
                Some(_) => i += 1,
            }
        }
    }

    /// `$1` (parameter) or `$tag$…$tag$` (dollar quote). A `$` that starts neither is an
    /// error, as in PostgreSQL.
    fn dollar(&mut self) -> TokenKind {
        let start = self.pos;
        if matches!(self.byte_at(start + 1), Some(b'0'..=b'9')) {
            let mut i = start + 1;
            while matches!(self.byte_at(i), Some(b'0'..=b'9')) {
                i += 1;
            }
            self.pos = i;
            return TokenKind::Param;
        }
        // The opening delimiter: `$`, an optional tag (no `$` and no leading digit), `$`.
        let mut i = start + 1;
        if let Some(b) = self.byte_at(i) {
            if is_ident_start(b) {
                i += 1;
                while let Some(b) = self.byte_at(i) {
                    if is_ident_start(b) || b.is_ascii_digit() {
                        i += 1;
                    } else {
                        break;
                    }
                }
            }
        }
        if self.byte_at(i) != Some(b'$') {
            return TokenKind::Error;
        }
        let delimiter = &self.src[start..=i];
        match find(&self.src[i + 1..], delimiter) {
            Some(at) => {
                self.pos = i + 1 + at + delimiter.len();
                TokenKind::DollarString
            }
            None => TokenKind::Error,
        }
    }

    /// A run of operator characters. As in PostgreSQL, `--` and `/*` end the operator
    /// because they start a comment.
    fn operator(&mut self) -> TokenKind {
        let start = self.pos;
        let mut i = start;
        while let Some(b) = self.byte_at(i) {
            if !is_op_char(b) {
                break;
            }
            let next = self.byte_at(i + 1);
            if i > start && ((b == b'-' && next == Some(b'-')) || (b == b'/' && next == Some(b'*')))
            {
                break;
            }
            i += 1;
        }
        self.pos = i;
        TokenKind::Operator
    }

    /// A word, or one of the prefixed literals a single letter can start: `E'…'`, `B'…'`,
    /// `X'…'`, `N'…'`, `U&'…'`, `U&"…"`.
    fn word_or_prefixed_literal(&mut self) -> TokenKind {
        let start = self.pos;
        let first = self.src[start];
        match (first, self.byte_at(start + 1), self.byte_at(start + 2)) {
            (b'e' | b'E', Some(b'\''), _) => return self.quoted_string(start + 2, true, false),
            (b'b' | b'B' | b'x' | b'X' | b'n' | b'N', Some(b'\''), _) => {
                // Bit strings and national strings take no backslash escapes; the national
                // form is a plain string and depends on standard_conforming_strings.
                let plain = matches!(first, b'n' | b'N');
                let backslash = plain && self.options.backslash_escapes;
                return self.quoted_string(start + 2, backslash, plain);
            }
            (b'u' | b'U', Some(b'&'), Some(b'\'')) => {
                // Unicode escapes use backslashes too, but never to hide a quote.
                return self.quoted_string(start + 3, false, false);
            }
            (b'u' | b'U', Some(b'&'), Some(b'"')) => return self.quoted_ident(start + 3),
            _ => {}
        }
        let rest = &self.src[start + 1..];
        let len = rest
            .iter()
            .position(|&b| !is_ident_cont(b))
            .unwrap_or(rest.len());
        self.pos = start + 1 + len;
        TokenKind::Word
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.next_token()
    }
}

/// The comments before the first token of `src`, as their inner text (without `--`, `/*`,
/// `*/`). Stops at the first token, or at an unterminated comment.
pub fn leading_comments(src: &[u8]) -> LeadingComments<'_> {
    LeadingComments { src, pos: 0 }
}

/// Iterator returned by [`leading_comments`].
#[derive(Debug, Clone)]
pub struct LeadingComments<'a> {
    /// The whole input.
    src: &'a [u8],
    /// Where to continue; `src.len()` once a token or the end was reached.
    pos: usize,
}

impl<'a> Iterator for LeadingComments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while self.src.get(self.pos).is_some_and(|&b| is_space(b)) {
            self.pos += 1;
        }
        let start = self.pos;
        match (self.src.get(start), self.src.get(start + 1)) {
            (Some(b'-'), Some(b'-')) => {
                let end = line_comment_end(self.src, start);
                self.pos = end;
                Some(&self.src[start + 2..end])
            }
            (Some(b'/'), Some(b'*')) => match block_comment_end(self.src, start) {
                Some(end) => {
                    self.pos = end;
                    Some(&self.src[start + 2..end - 2])
                }
                None => {
                    self.pos = self.src.len();
                    None
                }
            },
            _ => {
                self.pos = self.src.len();
                None
            }
        }
    }
}

/// End of a `--` comment starting at `start`: the offset of its line break (or the end).
fn line_comment_end(src: &[u8], start: usize) -> usize {
    src[start..]
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map_or(src.len(), |n| start + n)
}

/// End (offset past `*/`) of a block comment starting at `start`, honouring nesting as
/// PostgreSQL does; `None` if it never closes.
fn block_comment_end(src: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < src.len() {
        match (src[i], src[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// First offset of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(n) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + n;
        if haystack[at + 1..].starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The end of the numeric literal that starts at `start` (a digit, or a `.` before one): digits,
/// letters and `_` (`0x1F`, `1_000`, trailing junk), one `.` unless it starts `..` (`1.5`, `1.`),
/// and an exponent's sign (`1e-5`). Shared by the lexer and the classifier cache's literal-free
/// key, which must agree on where a number ends.
pub fn number_end(src: &[u8], start: usize) -> usize {
    let at = |i: usize| src.get(i).copied();
    let hex_like = at(start) == Some(b'0')
        && matches!(at(start + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B'));
    let mut dot = at(start) == Some(b'.');
    let mut pos = start + usize::from(dot); // `.5`
    while let Some(b) = at(pos) {
        if b.is_ascii_alphanumeric() || b == b'_' {
            pos += 1;
        } else if b == b'.' && !dot && !hex_like && at(pos + 1) != Some(b'.') {
            // `1.5`, `1.`; but `1..2` is not a number followed by a fraction.
            dot = true;
            pos += 1;
        } else if (b == b'+' || b == b'-')
            && !hex_like
            && matches!(src.get(pos - 1), Some(b'e' | b'E'))
            && matches!(at(pos + 1), Some(b'0'..=b'9'))
        {
            pos += 1; // exponent sign: `1e-5`
        } else {
            break;
        }
    }
    pos
}

/// PostgreSQL's whitespace: space, tab, newline, carriage return, form feed, vertical tab.
#[inline]
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Bytes that may start an unquoted identifier: letters, `_`, and any byte with the high bit
/// set (PostgreSQL accepts every non-ASCII character in names).
#[inline]
pub fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// Bytes that may continue an unquoted identifier: those that start one, digits and `$`.
#[inline]
pub fn is_ident_cont(b: u8) -> bool {
    IDENT_CONT[b as usize]
}

/// [`is_ident_cont`] as a table: one load per byte of every word the classifier reads.
const IDENT_CONT: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
        i += 1;
    }
    t
};

/// PostgreSQL's operator characters.
#[inline]
pub(crate) const fn is_op_char(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
    )
}
