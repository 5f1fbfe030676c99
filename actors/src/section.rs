//! A dialect's own section of the configuration, `[<dialect name>]`: its keys are the dialect's
//! business, so the configuration holds each section with its type erased and hands it back to
//! the dialect typed.

use std::any::Any;
use std::borrow::Cow;
use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::room_key::Namespace;

/// A numeric key of a section and the range it must lie in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The key inside the section.
    pub key: &'static str,
    pub value: u64,
    pub min: u64,
    pub max: u64,
}

/// A dialect's section: read from the configuration file (every key optional: `Default` fills
/// in the rest), written back when the configuration is shown.
pub trait Section:
    Serialize + DeserializeOwned + Default + Clone + Debug + Send + Sync + 'static
{
    /// Its numeric keys, each with the range outside which it would break something.
    fn bounds(&self) -> Vec<Bound> {
        Vec::new()
    }
}

/// A [`Section`] whose type the holder does not know.
pub trait AnySection: Debug + Send + Sync {
    fn bounds(&self) -> Vec<Bound>;
    /// The section as JSON, as the configuration file would hold it.
    fn to_json(&self) -> Value;
    fn clone_box(&self) -> Box<dyn AnySection>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Section> AnySection for T {
    fn bounds(&self) -> Vec<Bound> {
        Section::bounds(self)
    }

    fn to_json(&self) -> Value {
        // A section is plain data: it has no map with non-string keys, nothing that can fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    fn clone_box(&self) -> Box<dyn AnySection> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// How a dialect's description makes its section: the defaults, and reading one.
#[derive(Clone, Copy)]
pub struct SectionSpec {
    pub default: fn() -> Box<dyn AnySection>,
    /// Reads the section from its keys as the configuration file holds them.
    pub parse: fn(Value) -> Result<Box<dyn AnySection>, serde_json::Error>,
}

impl SectionSpec {
    pub const fn of<T: Section>() -> SectionSpec {
        SectionSpec {
            default: default_section::<T>,
            parse: parse_section::<T>,
        }
    }
}

fn default_section<T: Section>() -> Box<dyn AnySection> {
    Box::new(T::default())
}

fn parse_section<T: Section>(keys: Value) -> Result<Box<dyn AnySection>, serde_json::Error> {
    Ok(Box::new(serde_json::from_value::<T>(keys)?))
}

/// Every dialect's section, by the dialect's namespace, in the order the dialects were given.
#[derive(Debug, Default)]
pub struct DialectSections(Vec<(Namespace, Box<dyn AnySection>)>);

impl Clone for DialectSections {
    fn clone(&self) -> DialectSections {
        DialectSections(self.0.iter().map(|(ns, s)| (*ns, s.clone_box())).collect())
    }
}

impl DialectSections {
    /// Sets the section of `namespace`, in place of the one it had.
    pub fn set(&mut self, namespace: Namespace, section: Box<dyn AnySection>) {
        match self.0.iter_mut().find(|(ns, _)| *ns == namespace) {
            Some((_, held)) => *held = section,
            None => self.0.push((namespace, section)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (Namespace, &dyn AnySection)> {
        self.0.iter().map(|(ns, s)| (*ns, s.as_ref()))
    }

    /// The section of type `T`, if there is one.
    pub fn get<T: Section>(&self) -> Option<&T> {
        self.0.iter().find_map(|(_, s)| s.as_any().downcast_ref())
    }

    pub fn get_mut<T: Section>(&mut self) -> Option<&mut T> {
        self.0
            .iter_mut()
            .find_map(|(_, s)| s.as_any_mut().downcast_mut())
    }

    /// The section of type `T`, or its defaults where none was given (settings made by hand).
    pub fn own<T: Section>(&self) -> Cow<'_, T> {
        match self.get() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(T::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Knobs {
        batch: u64,
    }

    impl Default for Knobs {
        fn default() -> Knobs {
            Knobs { batch: 7 }
        }
    }

    impl Section for Knobs {
        fn bounds(&self) -> Vec<Bound> {
            vec![Bound {
                key: "batch",
                value: self.batch,
                min: 1,
                max: 10,
            }]
        }
    }

    #[test]
    fn sections_come_back_typed() {
        let spec = SectionSpec::of::<Knobs>();
        let ns = Namespace::new("knobs");
        let mut sections = DialectSections::default();
        assert_eq!(sections.own::<Knobs>().batch, 7, "defaults when absent");
        sections.set(ns, (spec.default)());
        assert_eq!(sections.get::<Knobs>(), Some(&Knobs { batch: 7 }));
        let parsed = (spec.parse)(serde_json::json!({"batch": 3})).expect("parses");
        assert_eq!(parsed.to_json(), serde_json::json!({"batch": 3}));
        assert_eq!(parsed.bounds()[0].value, 3);
        sections.set(ns, parsed);
        assert_eq!(sections.iter().count(), 1, "replaced, not added");
        if let Some(k) = sections.get_mut::<Knobs>() {
            k.batch = 9;
        }
        assert_eq!(sections.clone().own::<Knobs>().batch, 9);
        assert!((spec.parse)(serde_json::json!({"bach": 3})).is_err());
        assert!((spec.parse)(serde_json::json!({"batch": "lots"})).is_err());
    }
}
