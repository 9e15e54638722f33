//! Reads protobuf text format (Triton's `config.pbtxt`) into a generic tree: enough to find a
//! model's inputs as the server will see them, whoever wrote the file.

use anyhow::{bail, Context, Result};

/// A field's value: a scalar (identifier, number or unquoted string), a message, or a list.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar(String),
    Message(Message),
    List(Vec<Value>),
}

/// The fields of one message in file order; repeated fields appear once per occurrence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message(pub Vec<(String, Value)>);

impl Message {
    pub fn parse(text: &str) -> Result<Message> {
        let tokens = tokenize(text)?;
        let mut parser = Parser { tokens, at: 0 };
        let message = parser.fields(None)?;
        Ok(message)
    }

    /// Every value of `key`, a list's items flattened (`input [ {..}, {..} ]` and repeated `input {..}` alike).
    pub fn all(&self, key: &str) -> Vec<&Value> {
        let mut values = Vec::new();
        for (k, v) in &self.0 {
            if k == key {
                match v {
                    Value::List(items) => values.extend(items.iter()),
                    v => values.push(v),
                }
            }
        }
        values
    }

    /// The first scalar of `key`.
    pub fn scalar(&self, key: &str) -> Option<&str> {
        self.all(key).into_iter().find_map(|v| match v {
            Value::Scalar(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The `parameters { key: "K" value { string_value: "V" } }` pairs, in order.
    pub fn string_parameters(&self) -> Vec<(&str, &str)> {
        self.all("parameters")
            .into_iter()
            .filter_map(|p| match p {
                Value::Message(m) => match m.all("value").first() {
                    Some(Value::Message(v)) => Some((m.scalar("key")?, v.scalar("string_value")?)),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// The scalars of `key` (`dims: [ 1, -1 ]` or repeated `dims: 1`).
    pub fn scalars(&self, key: &str) -> Vec<&str> {
        self.all(key)
            .into_iter()
            .filter_map(|v| match v {
                Value::Scalar(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Punct(char),
}

fn tokenize(text: &str) -> Result<Vec<(Token, usize)>> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => while chars.next_if(|&(_, c)| c != '\n').is_some() {},
            '{' | '}' | '[' | ']' | ':' | ',' | ';' | '<' | '>' => {
                chars.next();
                tokens.push((Token::Punct(c), line_of(at)));
            }
            '"' | '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => s.push('\n'),
                            Some((_, 't')) => s.push('\t'),
                            Some((_, e)) => s.push(e),
                            None => bail!("line {}: unterminated string", line_of(at)),
                        },
                        Some((_, q)) if q == c => break,
                        Some((_, ch)) => s.push(ch),
                        None => bail!("line {}: unterminated string", line_of(at)),
                    }
                }
                tokens.push((Token::Str(s), line_of(at)));
            }
            c if c.is_alphanumeric() || "_-+.".contains(c) => {
                let mut s = String::new();
                while let Some((_, ch)) = chars.next_if(|&(_, ch)| ch.is_alphanumeric() || "_-+.".contains(ch)) {
                    s.push(ch);
                }
                tokens.push((Token::Word(s), line_of(at)));
            }
            c => bail!("line {}: unexpected character {c:?}", line_of(at)),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }
    fn line(&self) -> usize {
        self.tokens
            .get(self.at)
            .or(self.tokens.last())
            .map_or(1, |(_, line)| *line)
    }
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).map(|(t, _)| t.clone());
        self.at += 1;
        token
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Token::Punct(c)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Fields until `close` (or the end of the file at the top level).
    fn fields(&mut self, close: Option<char>) -> Result<Message> {
        let mut fields = Vec::new();
        loop {
            match (self.peek(), close) {
                (None, None) => return Ok(Message(fields)),
                (None, Some(c)) => bail!("line {}: missing {c:?}", self.line()),
                (Some(Token::Punct(p)), Some(c)) if *p == c => {
                    self.at += 1;
                    return Ok(Message(fields));
                }
                _ => {}
            }
            let line = self.line();
            let key = match self.next() {
                Some(Token::Word(w)) => w,
                other => bail!("line {line}: expected a field name, found {other:?}"),
            };
            let colon = self.eat(':');
            let value = self.value(colon).with_context(|| format!("field {key:?}"))?;
            fields.push((key, value));
            let _ = self.eat(',') || self.eat(';');
        }
    }

    fn value(&mut self, after_colon: bool) -> Result<Value> {
        let line = self.line();
        match self.next() {
            Some(Token::Punct('{')) => Ok(Value::Message(self.fields(Some('}'))?)),
            Some(Token::Punct('<')) => Ok(Value::Message(self.fields(Some('>'))?)),
            Some(Token::Punct('[')) => {
                let mut items = Vec::new();
                if self.eat(']') {
                    return Ok(Value::List(items));
                }
                loop {
                    items.push(self.value(true)?);
                    if self.eat(']') {
                        return Ok(Value::List(items));
                    }
                    if !self.eat(',') {
                        bail!("line {}: expected ',' or ']' in a list", self.line());
                    }
                }
            }
            Some(Token::Word(w)) if after_colon => Ok(Value::Scalar(w)),
            Some(Token::Str(mut s)) if after_colon => {
                // Adjacent string literals concatenate.
                while let Some(Token::Str(more)) = self.peek().cloned() {
                    s.push_str(&more);
                    self.at += 1;
                }
                Ok(Value::Scalar(s))
            }
            other => bail!("line {line}: expected a value, found {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lists_repeated_fields_and_nested_messages() {
        let text = r#"
name: "flux"  # the orchestrator
max_batch_size: 4
input [
  { name: "prompt" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "seed", data_type: TYPE_INT64, dims: [ 1 ], optional: true }
]
input { name: 'noise' data_type: TYPE_FP32 dims: 16 dims: -1 }
parameters { key: "a" value { string_value: "say \"hi\"" } }
"#;
        let m = Message::parse(text).unwrap();
        assert_eq!(m.scalar("name"), Some("flux"));
        let inputs = m.all("input");
        assert_eq!(inputs.len(), 3);
        let Value::Message(noise) = inputs[2] else { panic!() };
        assert_eq!(noise.scalars("dims"), ["16", "-1"]);
        let Value::Message(seed) = inputs[1] else { panic!() };
        assert_eq!(seed.scalar("optional"), Some("true"));
        let Value::Message(p) = m.all("parameters")[0] else {
            panic!()
        };
        let Value::Message(v) = p.all("value")[0] else { panic!() };
        assert_eq!(v.scalar("string_value"), Some("say \"hi\""));
    }

    #[test]
    fn names_the_line_of_a_syntax_error() {
        let e = Message::parse("name: \"x\"\ninput [ { name: \"a\" }\n").unwrap_err();
        assert!(format!("{e:#}").contains("line"), "{e:#}");
        let e = Message::parse("name: \"x\"\n  dims: [ 1 2 ]\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
    }
}
