//! A model's config.pbtxt `parameters` as a typed struct, both ways: a field's name is its key.
//! Triton parameters are strings: numbers are written as decimal text, booleans as `true` /
//! `false`, enums by their lowercase name; `json_text` and `comma_list` fields as their names say.
//! Reading names the missing or ill-typed key.

use anyhow::{Context, Result};
use serde::de::value::{Error as DeError, MapDeserializer, StrDeserializer};
use serde::de::{DeserializeOwned, Error as _, IntoDeserializer, Visitor};
use serde::{Deserializer, Serialize};

/// A model's parameters as one struct.
pub trait Parameters: Serialize + DeserializeOwned {
    /// Whose parameters, for errors ("the orchestrator's parameters").
    const WHAT: &'static str;

    /// The (key, value) pairs of config.pbtxt.
    fn to_strings(&self) -> Result<Vec<(String, String)>> {
        // Through JSON text, which writes an f32 as its shortest decimal (3.5, not 3.5000000...).
        let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&serde_json::to_string(self)?)?;
        Ok(fields
            .into_iter()
            .map(|(key, value)| match value {
                serde_json::Value::String(text) => (key, text),
                other => (key, other.to_string()),
            })
            .collect())
    }

    /// Reads the parameters from config.pbtxt's (key, value) pairs; other keys are ignored.
    /// Errors name the missing or ill-typed key.
    fn from_strings<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let pairs = pairs.into_iter().map(|(key, text)| (key, Text { key, text }));
        Self::deserialize(MapDeserializer::<_, DeError>::new(pairs)).context(Self::WHAT)
    }
}

/// One parameter's text, parsed as the field's type asks.
struct Text<'a> {
    key: &'a str,
    text: &'a str,
}

impl Text<'_> {
    fn parse<T: std::str::FromStr>(&self, what: &str) -> Result<T, DeError> {
        self.text
            .parse()
            .map_err(|_| DeError::custom(format!("parameter `{}` is {:?}, not {what}", self.key, self.text)))
    }
}

impl<'de> IntoDeserializer<'de, DeError> for Text<'_> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! parsed {
    ($($method:ident $visit:ident $type:ty, $what:literal;)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            visitor.$visit(self.parse::<$type>($what)?)
        })*
    };
}

impl<'de> Deserializer<'de> for Text<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str(self.text)
    }

    parsed! {
        deserialize_bool visit_bool bool, "true or false";
        deserialize_u32 visit_u32 u32, "a count";
        deserialize_u64 visit_u64 u64, "a count";
        deserialize_i64 visit_i64 i64, "an integer";
        deserialize_f32 visit_f32 f32, "a number";
        deserialize_f64 visit_f64 f64, "a number";
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        StrDeserializer::<DeError>::new(self.text)
            .deserialize_enum(name, variants, visitor)
            .map_err(|e| DeError::custom(format!("parameter `{}`: {e}", self.key)))
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i128 u8 u16 u128 char str string bytes byte_buf unit unit_struct newtype_struct seq
        tuple tuple_struct map struct identifier ignored_any
    }
}

/// A value written as its compact JSON text.
pub mod json_text {
    use serde::de::{DeserializeOwned, Error};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&serde_json::to_string(value).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        let text = String::deserialize(deserializer)?;
        serde_json::from_str(&text).map_err(|e| D::Error::custom(format!("{text:?} is not the expected JSON ({e})")))
    }
}

/// Model names, comma-separated.
pub mod comma_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(names: &[String], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&names.join(","))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(text.split(',').filter(|m| !m.is_empty()).map(str::to_string).collect())
    }
}
