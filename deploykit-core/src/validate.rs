//! One validation per type, whichever way a value arrives.
//!
//! Specs are built three ways: with their builders, deserialised with serde (a journal entry,
//! a JSON document from an embedder), and by the `deploykit.toml` loader (which goes through the
//! builders). [`validated_serde!`] makes the serde path call the same `validate` the builders
//! call, so one input is accepted or refused the same way on every path: the derived
//! (de)serialiser is generated under `#[serde(remote = "Self")]` as inherent functions, and the
//! trait implementations wrap them, validating after deserialising.

/// Implement `Serialize` and `Deserialize` for a type whose derives carry
/// `#[serde(remote = "Self")]`, validating with `$validate` (a `fn(&T) -> Result<()>`) after
/// every deserialisation.
macro_rules! validated_serde {
    ($ty:ty, $validate:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$ty>::serialize(self, s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = <$ty>::deserialize(d)?;
                let check: fn(&$ty) -> $crate::error::Result<()> = $validate;
                check(&value).map_err(serde::de::Error::custom)?;
                Ok(value)
            }
        }
    };
}

pub(crate) use validated_serde;
