//! vif hotplug decisions: whether a vif is ours, which bridge it joins, what to write
//! back. Pure code; `daemon/hotplug.rs` reads Xenstore and runs the bridge ioctls.
//!
//! A vif is ours when its backend directory holds `toolstack = "chaos"` (LightVM's
//! marker): chaos writes it in the same transaction as the rest of the backend
//! directory, so it is there when netback's `online` uevent comes. Every other vif
//! (xl's) is left to the hotplug script its toolstack runs.

use std::collections::BTreeMap;

use crate::api::Vif;
use crate::bridge::NetError;
use crate::uevent::VifEvent;

/// The value of `<backend>/toolstack` that makes a vif ours.
pub const TOOLSTACK_MARKER: &str = "chaos";

/// Xenstore nodes of a vif backend directory that xendevd reads or writes.
pub mod node {
    pub const TOOLSTACK: &str = "toolstack";
    pub const BRIDGE: &str = "bridge";
    pub const HOTPLUG_STATUS: &str = "hotplug-status";
    pub const HOTPLUG_ERROR: &str = "hotplug-error";
    /// The value of `hotplug-status` netback waits for before it connects the frontend.
    pub const CONNECTED: &str = "connected";
    pub const ERROR: &str = "error";
}

/// What the backend directory said, read when the `online` uevent came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendFacts {
    pub toolstack: Option<String>,
    pub bridge: Option<String>,
}

/// What to do with a vif that came online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnlinePlan {
    /// Not ours: another toolstack's script handles it.
    Ignore { why: String },
    /// Add it to `bridge`, bring it up, write `hotplug-status = connected`.
    Attach { bridge: String },
    /// Ours, but it cannot work: write `hotplug-error = error` and `hotplug-status = error`.
    Fail(HotplugError),
}

/// Why one of chaos's vifs cannot be set up; the message goes to `hotplug-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HotplugError {
    #[error(
        "no bridge: {backend}/{} is absent (chaos names the bridge there)",
        node::BRIDGE
    )]
    NoBridgeNode { backend: String },
    #[error("bridge {bridge:?} in {backend}: {why}")]
    BadBridge {
        bridge: String,
        backend: String,
        why: IfnameError,
    },
    #[error(transparent)]
    Net(#[from] NetError),
}

/// Why a name cannot be a Linux network interface's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfnameError {
    #[error("an interface name cannot be empty")]
    Empty,
    #[error("an interface name has at most 15 bytes, this has {0}")]
    TooLong(usize),
    #[error("an interface name cannot be . or ..")]
    Dots,
    #[error("an interface name cannot hold {0:?}")]
    Character(char),
}

/// Decide what an `online` asks for.
pub fn plan_online(event: &VifEvent, facts: &BackendFacts) -> OnlinePlan {
    match facts.toolstack.as_deref() {
        Some(TOOLSTACK_MARKER) => {}
        Some(other) => {
            return OnlinePlan::Ignore {
                why: format!("its toolstack is {other:?}, not {TOOLSTACK_MARKER:?}"),
            };
        }
        None => {
            return OnlinePlan::Ignore {
                why: format!("{}/{} is absent", event.backend, node::TOOLSTACK),
            };
        }
    }
    match facts.bridge.as_deref() {
        None => OnlinePlan::Fail(HotplugError::NoBridgeNode {
            backend: event.backend.clone(),
        }),
        Some(bridge) => match check_ifname(bridge) {
            Ok(()) => OnlinePlan::Attach {
                bridge: bridge.to_owned(),
            },
            Err(why) => OnlinePlan::Fail(HotplugError::BadBridge {
                bridge: bridge.to_owned(),
                backend: event.backend.clone(),
                why,
            }),
        },
    }
}

/// Whether `name` can be a Linux network interface name (`dev_valid_name`): 1 to 15
/// bytes, not `.` or `..`, no `/`, `:` or white space.
pub fn check_ifname(name: &str) -> Result<(), IfnameError> {
    if name.is_empty() {
        return Err(IfnameError::Empty);
    }
    if name.len() > 15 {
        return Err(IfnameError::TooLong(name.len()));
    }
    if name == "." || name == ".." {
        return Err(IfnameError::Dots);
    }
    if let Some(bad) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(IfnameError::Character(bad));
    }
    Ok(())
}

/// The vifs xendevd put on a bridge, by interface name.
#[derive(Debug, Default)]
pub struct VifBook {
    vifs: BTreeMap<String, Vif>,
}

impl VifBook {
    pub fn insert(&mut self, vif: Vif) {
        self.vifs.insert(vif.name.clone(), vif);
    }

    /// Forget `name`; what it was, if ours.
    pub fn remove(&mut self, name: &str) -> Option<Vif> {
        self.vifs.remove(name)
    }

    /// Every vif, by domain then name.
    pub fn list(&self) -> Vec<Vif> {
        let mut vifs: Vec<Vif> = self.vifs.values().cloned().collect();
        vifs.sort_by(|a, b| (a.domid, &a.name).cmp(&(b.domid, &b.name)));
        vifs
    }

    pub fn len(&self) -> usize {
        self.vifs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uevent::{Relevant, Uevent, classify, tests::ONLINE};

    fn online() -> VifEvent {
        match classify(&Uevent::parse(ONLINE).unwrap()).unwrap() {
            Relevant::Vif(event) => event,
            other => panic!("{other:?}"),
        }
    }

    fn facts(toolstack: Option<&str>, bridge: Option<&str>) -> BackendFacts {
        BackendFacts {
            toolstack: toolstack.map(Into::into),
            bridge: bridge.map(Into::into),
        }
    }

    #[test]
    fn only_chaos_vifs_are_ours() {
        let event = online();
        assert_eq!(
            plan_online(&event, &facts(Some("chaos"), Some("xenbr0"))),
            OnlinePlan::Attach {
                bridge: "xenbr0".into()
            }
        );
        // xl writes no toolstack node: its vif-bridge script does the work.
        assert_eq!(
            plan_online(&event, &facts(None, Some("xenbr0"))),
            OnlinePlan::Ignore {
                why: "backend/vif/1/0/toolstack is absent".into()
            }
        );
        assert_eq!(
            plan_online(&event, &facts(Some("xl"), Some("xenbr0"))),
            OnlinePlan::Ignore {
                why: "its toolstack is \"xl\", not \"chaos\"".into()
            }
        );
        // Not ours: no bridge is no error of ours either.
        assert!(matches!(
            plan_online(&event, &facts(None, None)),
            OnlinePlan::Ignore { .. }
        ));
    }

    #[test]
    fn a_chaos_vif_without_a_usable_bridge_fails() {
        let event = online();
        let OnlinePlan::Fail(error) = plan_online(&event, &facts(Some("chaos"), None)) else {
            panic!("no bridge must fail");
        };
        assert_eq!(
            error.to_string(),
            "no bridge: backend/vif/1/0/bridge is absent (chaos names the bridge there)"
        );
        for (bridge, why) in [
            ("", "cannot be empty"),
            ("a-bridge-name-too-long", "at most 15 bytes, this has 22"),
            ("br 0", "cannot hold ' '"),
            ("../x", "cannot hold '/'"),
            ("..", "cannot be . or .."),
        ] {
            let OnlinePlan::Fail(error) = plan_online(&event, &facts(Some("chaos"), Some(bridge)))
            else {
                panic!("{bridge:?} must fail");
            };
            let error = error.to_string();
            assert!(error.contains(why), "{bridge:?}: {error}");
            assert!(error.contains("in backend/vif/1/0"), "{error}");
        }
    }

    #[test]
    fn the_book() {
        let mut book = VifBook::default();
        for (name, domid) in [("vif7.0", 7), ("vif3.1", 3), ("vif3.0", 3)] {
            book.insert(Vif {
                name: name.into(),
                bridge: "xenbr0".into(),
                domid,
            });
        }
        let names: Vec<String> = book.list().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["vif3.0", "vif3.1", "vif7.0"]);
        assert_eq!(book.remove("vif3.1").unwrap().domid, 3);
        assert!(book.remove("vif3.1").is_none());
        assert_eq!(book.len(), 2);
    }
}
