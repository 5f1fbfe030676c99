//! The dialects this hub speaks. A dialect is its folder (codec, model, settings, and its
//! description, `DIALECT`) and one line here; everything else goes by the list.

use std::collections::HashMap;
use std::sync::Arc;

use crate::dialect_spec::DialectSpec;
use crate::hub::{CommonSettings, DialectRooms};
use crate::model::Model;
use crate::room_key::Namespace;
use crate::section::DialectSections;

pub static DIALECTS: &[&DialectSpec] = &[
    &crate::pocket::DIALECT,
    &crate::synckit::DIALECT,
    &crate::relay::DIALECT,
];

/// The dialect called `name`.
pub fn find(name: &str) -> Option<&'static DialectSpec> {
    DIALECTS.iter().copied().find(|d| d.name() == name)
}

/// How every dialect's rooms run, for the hub's settings.
pub fn rooms() -> Vec<DialectRooms> {
    DIALECTS.iter().map(|d| d.rooms).collect()
}

/// Every dialect's section of the configuration, as the defaults have it.
pub fn default_sections() -> DialectSections {
    let mut sections = DialectSections::default();
    for d in DIALECTS {
        sections.set(d.namespace(), (d.settings.default)());
    }
    sections
}

/// Every dialect's model under `sections` and `common`, as a hub built with them runs it:
/// what `synchub check-data` and a storage upgrade replay logs with.
pub fn models(
    sections: &DialectSections,
    common: &CommonSettings,
) -> HashMap<Namespace, Arc<dyn Model>> {
    DIALECTS
        .iter()
        .map(|d| (d.namespace(), (d.rooms.model)(sections, common)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects_are_found_by_name_and_only_theirs() {
        assert_eq!(
            find("synckit").map(|d| d.namespace()),
            Some(crate::synckit::NAMESPACE)
        );
        assert!(find("nope").is_none());
        assert!(find("").is_none());
        let mut names: Vec<&str> = DIALECTS.iter().map(|d| d.name()).collect();
        assert_eq!(names, ["pocket", "synckit", "relay"]);
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DIALECTS.len(), "one description per name");
    }

    #[test]
    fn no_two_dialects_share_a_path_or_a_section() {
        let mut paths: Vec<&str> = DIALECTS
            .iter()
            .flat_map(|d| d.websocket.paths.iter().copied())
            .collect();
        let n = paths.len();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), n, "{paths:?}");
        let sections = default_sections();
        assert_eq!(sections.iter().count(), DIALECTS.len());
        for (ns, section) in sections.iter() {
            assert!(section.to_json().is_object(), "{ns}: a section is a table");
        }
    }
}
