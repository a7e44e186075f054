//! A strict RFC 8259 validator for untrusted JSON.
//!
//! Owner's rule: [`validate`] only says yes or no (with a position) and builds no value;
//! [`parse_lenient`] reads what it accepted into a `serde_json::Value` for the code that
//! must look inside (envelope filters, the CLI), never for what is stored or sent.
//! It exists because serde_json, like most parsers, silently keeps the last of duplicate
//! object keys, and we promise that a validator and a receiver never read different values.
//! It also refuses what RFC 8259 does not allow: `NaN`, `Infinity`, lone surrogate escapes,
//! control characters in strings, leading zeros, trailing garbage. Numbers are checked for
//! grammar only, never converted, so values beyond a double's range pass unchanged.

use std::collections::HashSet;

/// Maximum nesting of arrays and objects. Deeper input is refused rather than risk the stack.
pub const MAX_DEPTH: usize = 128;

/// Why the input is not acceptable JSON, and the byte offset where that was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at byte {offset}")]
pub struct JsonError {
    /// Byte offset into the validated text.
    pub offset: usize,
    /// A short English description (`duplicate key "id"`, `lone surrogate escape`, ...).
    pub reason: String,
}

/// Checks that `text` is exactly one JSON value (RFC 8259), optionally surrounded by
/// whitespace, with no duplicate key in any object.
///
/// # Errors
/// [`JsonError`] with the first problem found.
pub fn validate(text: &str) -> Result<(), JsonError> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        pos: 0,
    };
    parser.skip_ws();
    parser.value(0)?;
    parser.skip_ws();
    if parser.pos != parser.bytes.len() {
        return Err(parser.error("trailing characters after the JSON value"));
    }
    Ok(())
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: impl Into<String>) -> JsonError {
        JsonError {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect_literal(&mut self, literal: &str) -> Result<(), JsonError> {
        if self.bytes[self.pos..].starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            Ok(())
        } else {
            Err(self.error("invalid literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), JsonError> {
        match self.peek() {
            None => Err(self.error("unexpected end of input")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(drop),
            Some(b't') => self.expect_literal("true"),
            Some(b'f') => self.expect_literal("false"),
            Some(b'n') => self.expect_literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected a JSON value")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        self.pos += 1;
        let mut keys = HashSet::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key_at = self.pos;
            let key = self.string()?;
            if !keys.insert(key) {
                let key = keys_display(&self.bytes[key_at..self.pos]);
                return Err(JsonError {
                    offset: key_at,
                    reason: format!("duplicate key {key}"),
                });
            }
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after an object key"));
            }
            self.pos += 1;
            self.skip_ws();
            self.value(depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected ',' or '}' in an object")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            self.value(depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected ',' or ']' in an array")),
            }
        }
    }

    /// Parses a string and returns its decoded value (needed to compare keys).
    fn string(&mut self) -> Result<String, JsonError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // The input is a &str and we only stop on ASCII bytes, so this slice is valid UTF-8.
            out.push_str(std::str::from_utf8(&self.bytes[start..self.pos]).unwrap_or_default());
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    out.push(self.escape()?);
                }
                Some(_) => return Err(self.error("control character in a string")),
            }
        }
    }

    fn escape(&mut self) -> Result<char, JsonError> {
        let c = self
            .peek()
            .ok_or_else(|| self.error("unterminated escape"))?;
        self.pos += 1;
        Ok(match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.unicode_escape(),
            _ => return Err(self.error("invalid escape")),
        })
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("short \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error("invalid \\u escape"))?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error("invalid \\u escape"));
        }
        self.pos += 4;
        u32::from_str_radix(text, 16).map_err(|_| self.error("invalid \\u escape"))
    }

    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err(self.error("lone surrogate escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.error("lone surrogate escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.error("lone surrogate escape")),
            other => other,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(self.error("leading zero in a number"));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("invalid number: digits expected after '.'"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number: digits expected in the exponent"));
            }
        }
        Ok(())
    }
}

/// Parses JSON that [`validate`] accepted into a [`serde_json::Value`], whatever it holds:
/// nesting up to [`MAX_DEPTH`] and more (serde_json alone stops at 128 levels), and numbers
/// beyond a double's range (`1e400`), which serde_json refuses and which become strings of
/// their own text here, so the rest of the document still reads right (an envelope filter,
/// a CLI table). `None` only for text that is not JSON.
pub fn parse_lenient(text: &[u8]) -> Option<serde_json::Value> {
    let parse = |bytes: &[u8]| {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        // Bounded by the validator's MAX_DEPTH (plus the few levels an answer wraps it in).
        deserializer.disable_recursion_limit();
        serde::Deserialize::deserialize(&mut deserializer).ok()
    };
    if let Some(value) = parse(text) {
        return Some(value);
    }
    // Quote the numbers a double cannot hold.
    let mut patched = Vec::with_capacity(text.len() + 16);
    let mut i = 0;
    let mut changed = false;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                patched.extend_from_slice(&text[start..i.min(text.len())]);
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len()
                    && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let number = &text[start..i];
                let huge = std::str::from_utf8(number)
                    .ok()
                    .and_then(|n| n.parse::<f64>().ok())
                    .is_some_and(|f| f.is_infinite());
                if huge {
                    patched.push(b'"');
                    patched.extend_from_slice(number);
                    patched.push(b'"');
                    changed = true;
                } else {
                    patched.extend_from_slice(number);
                }
            }
            other => {
                patched.push(other);
                i += 1;
            }
        }
    }
    if changed {
        parse(&patched)
    } else {
        None
    }
}

/// The raw text of a key for an error message, shortened so a huge key cannot flood a response.
fn keys_display(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    if text.chars().count() > 64 {
        format!("{}…\"", text.chars().take(64).collect::<String>())
    } else {
        text.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_lenient, validate};

    #[test]
    fn lenient_parsing_reads_deep_documents_and_huge_numbers() {
        let value = parse_lenient(br#"{"a":1e400,"b":"1e400 \" 2e999","c":[-1e400,1.5]}"#).unwrap();
        assert_eq!(value["a"], "1e400");
        assert_eq!(value["b"], "1e400 \" 2e999");
        assert_eq!(value["c"][0], "-1e400");
        assert_eq!(value["c"][1], 1.5);
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(parse_lenient(deep.as_bytes()).is_some());
        assert!(parse_lenient(b"{nope").is_none());
    }

    #[test]
    fn accepts_valid_json_of_every_kind() {
        for ok in [
            r#"{"a":1,"b":[true,false,null],"c":{"d":"\u00e9\ud83d\ude00\"\\\/\b\f\n\r\t"}}"#,
            "12345678901234567890",
            "1e400",
            "-0.5E-3",
            " [ ] ",
            "\"é 🎉\"",
            r#"{"a":{"x":1},"b":{"x":2}}"#,
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_what_rfc_8259_does_not_allow() {
        for bad in [
            "NaN",
            "Infinity",
            "-Infinity",
            r#""\ud800""#,
            r#""\udc00x""#,
            r#""\ud800\u0041""#,
            "{} x",
            "{}{}",
            "01",
            "1.",
            ".5",
            "+1",
            "\"a\u{1}\"",
            "[1,]",
            "{\"a\":1,}",
            "'a'",
            "",
            "[",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn refuses_duplicate_keys_even_when_spelled_differently() {
        let err = validate(r#"{"data":{"a":1,"\u0061":2}}"#).unwrap_err();
        assert!(err.reason.contains("duplicate key"), "{err}");
        assert!(validate(r#"{"a":1,"a":1}"#).is_err());
    }

    #[test]
    fn refuses_nesting_beyond_the_limit() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(validate(&deep).is_err());
        let fine = "[".repeat(100) + &"]".repeat(100);
        assert_eq!(validate(&fine), Ok(()));
    }
}
