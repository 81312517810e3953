//! The serde forms that are not a plain derive (feature `serde`): a MAC address is its
//! text (`"00:16:3e:0a:00:10"`), and a NoXS [`Entry`] lists its fields in the order
//! xendevd's API has always written them (kind, devid, backend, grant, port), so the
//! JSON stays byte for byte what it was.

use core::fmt;

use serde::de::{self, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::netif::Mac;
use crate::noxs::Entry;

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MacText;

        impl Visitor<'_> for MacText {
            type Value = Mac;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MAC address (six hex pairs like 00:16:3e:0a:00:10)")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Mac, E> {
                text.parse()
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(text), &self))
            }
        }

        deserializer.deserialize_str(MacText)
    }
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut entry = serializer.serialize_struct("Entry", 5)?;
        entry.serialize_field("kind", &self.kind)?;
        entry.serialize_field("devid", &self.devid)?;
        entry.serialize_field("backend", &self.backend)?;
        entry.serialize_field("ctrl_gref", &self.ctrl_gref)?;
        entry.serialize_field("ctrl_port", &self.ctrl_port)?;
        entry.end()
    }
}
