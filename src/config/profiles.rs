//! `[profiles]`: which customer attributes are kept, and the regions counted by name.

use super::read::Fields;
use super::{Problem, Section};
use crate::event::{self, MAX_PROFILE_KEY_BYTES};
use crate::profiles::{ProfileSettings, NO_REGION, OTHER_REGION};

impl Section for ProfileSettings {
    fn from_fields(f: &mut Fields<'_>) -> Self {
        let d = Self::default();
        Self {
            keys: f.get("keys", d.keys),
            max_free_keys: f.get("max_free_keys", d.max_free_keys),
            max_value_bytes: f.get("max_value_bytes", d.max_value_bytes),
            regions: f.get("regions", d.regions),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for key in &self.keys {
            if event::profile_key(key.as_bytes()).is_none() {
                problems.push(Problem::new(
                    "profiles.keys",
                    format!("lists {key:?}, which is not a key (1 to {MAX_PROFILE_KEY_BYTES} bytes of a-z, 0-9 and _, a letter first)"),
                ));
            }
        }
        if self.max_free_keys > 64 {
            problems.push(Problem::new("profiles.max_free_keys", "must be at most 64"));
        }
        if self.keys.len() > 64 {
            problems.push(Problem::new("profiles.keys", "lists at most 64 keys"));
        }
        for reserved in event::EVENT_FIELDS {
            if self.keys.iter().any(|k| k == reserved) {
                problems.push(Problem::new(
                    "profiles.keys",
                    format!("lists {reserved:?}, a field of its own, never a profile attribute"),
                ));
            }
        }
        if !(1..=1024).contains(&self.max_value_bytes) {
            problems.push(Problem::new(
                "profiles.max_value_bytes",
                "must be between 1 and 1024",
            ));
        }
        if self.regions.len() > 64 {
            problems.push(Problem::new(
                "profiles.regions",
                "lists at most 64 regions (each is a metric label)",
            ));
        }
        for (i, region) in self.regions.iter().enumerate() {
            if region.is_empty() || region == OTHER_REGION || region == NO_REGION {
                problems.push(Problem::new(
                    "profiles.regions",
                    format!("lists {region:?}, which cannot be a region (empty, or a label churnd uses itself)"),
                ));
            } else if self.regions[..i].contains(region) {
                problems.push(Problem::new(
                    "profiles.regions",
                    format!("lists {region:?} twice"),
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_named() {
        let settings = ProfileSettings {
            keys: vec!["score".into(), "Region".into()],
            regions: vec!["eu".into(), "eu".into(), "none".into()],
            ..ProfileSettings::default()
        };
        let problems: Vec<String> = settings.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            problems,
            [
                "profiles.keys lists \"Region\", which is not a key (1 to 32 bytes of a-z, 0-9 and _, a letter first)",
                "profiles.keys lists \"score\", a field of its own, never a profile attribute",
                "profiles.regions lists \"eu\" twice",
                "profiles.regions lists \"none\", which cannot be a region (empty, or a label churnd uses itself)",
            ]
        );
        assert!(ProfileSettings::default().problems().is_empty());
    }
}
