//! Customer profiles: the attributes `profile` events carry (region, age band, birthday, …),
//! stored compactly.
//!
//! Attributes are few and repeat across customers (a million customers share a handful of
//! regions and age bands), so values and whole profiles are interned: a customer holds one
//! pointer to a [`Profile`] shared with everyone who has the same attributes. Keys are
//! bounded: the configured ones, plus at most `profiles.max_free_keys` free-form keys in use
//! at once (first come, first served; a key is in use while a customer's profile has it), so
//! that a producer sending random keys cannot grow memory or metrics without bound. Which
//! keys are in use follows from the customers' profiles alone, so a restored daemon and one
//! that never stopped agree.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use crate::event::{self, Reason, Rejection};

/// The region label of customers whose region is not one of `profiles.regions`.
pub(crate) const OTHER_REGION: &str = "other";
/// The region label of customers without a region.
pub(crate) const NO_REGION: &str = "none";

/// `[profiles]` settings, read and checked by `config::profiles`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileSettings {
    /// Attribute keys always accepted.
    pub keys: Vec<String>,
    /// Further (free-form) keys accepted while at most this many are in use, first come,
    /// first served. A profile event with yet another new key is dead-lettered
    /// (`unknown_profile_key`); a key is free again once no customer has it.
    pub max_free_keys: usize,
    /// Longest attribute value, in bytes.
    pub max_value_bytes: usize,
    /// Regions (values of the `region` attribute) counted by name in
    /// `churnd_customers_by_region`; other values count as `other`, no region as `none`.
    pub regions: Vec<String>,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        Self {
            keys: ["region", "age_band", "gender", "birthday", "channel"]
                .map(String::from)
                .to_vec(),
            max_free_keys: 16,
            max_value_bytes: 64,
            regions: Vec::new(),
        }
    }
}

/// One customer's attributes, shared by every customer with the same ones.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Profile {
    /// Sorted by key.
    attributes: Box<[(Arc<str>, Arc<str>)]>,
    /// Month and day of the `birthday` attribute, read once: every scoring asks for it.
    birthday: Option<(u8, u8)>,
}

impl Profile {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.attributes
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.attributes[i].1)
    }

    /// Every attribute, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attributes.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.attributes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty()
    }

    /// Month and day of the `birthday` attribute.
    pub fn birthday(&self) -> Option<(u8, u8)> {
        self.birthday
    }
}

/// Values and profiles in use, each held once.
#[derive(Debug, Default, Clone)]
pub struct Interner {
    values: HashSet<Arc<str>>,
    profiles: HashSet<Arc<Profile>>,
    /// Size of `profiles` at which the unused ones are dropped next.
    purge_at: usize,
}

/// Below this many interned profiles, unused ones are not looked for.
const MIN_PURGE: usize = 1_024;

impl Interner {
    /// The shared profile with these attributes (any order; keys unique).
    pub fn profile<'a>(
        &mut self,
        attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Arc<Profile> {
        let mut pairs: Vec<(Arc<str>, Arc<str>)> = attributes
            .into_iter()
            .map(|(k, v)| (self.value(k), self.value(v)))
            .collect();
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let birthday = pairs
            .iter()
            .find(|(k, _)| &**k == "birthday")
            .and_then(|(_, v)| event::birthday(v));
        let profile = Profile {
            attributes: pairs.into_boxed_slice(),
            birthday,
        };
        if let Some(shared) = self.profiles.get(&profile) {
            return shared.clone();
        }
        let shared = Arc::new(profile);
        self.profiles.insert(shared.clone());
        if self.profiles.len() >= self.purge_at.max(MIN_PURGE) {
            self.purge();
        }
        shared
    }

    fn value(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.values.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = text.into();
        self.values.insert(shared.clone());
        shared
    }

    /// Drops the profiles and values no customer holds any more; amortised over the growth
    /// since the last purge.
    fn purge(&mut self) {
        self.profiles.retain(|p| Arc::strong_count(p) > 1);
        self.values.retain(|v| Arc::strong_count(v) > 1);
        self.purge_at = self.profiles.len() * 2;
    }

    /// Distinct profiles held (some perhaps no longer used).
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

/// The first few of `keys` for a message, in parentheses (` (a, b, c, … and 13 more)`);
/// nothing when there are none.
fn named(keys: &[&str]) -> String {
    const SHOWN: usize = 4;
    if keys.is_empty() {
        return String::new();
    }
    let more = match keys.len().checked_sub(SHOWN) {
        Some(more) if more > 0 => format!(", … and {more} more"),
        _ => String::new(),
    };
    format!(" ({}{more})", keys[..keys.len().min(SHOWN)].join(", "))
}

/// The engine's profiles: the key bound and the interner.
#[derive(Debug, Clone)]
pub struct Profiles {
    known: Vec<String>,
    /// Free-form keys in use, with how many customers' profiles have each.
    free: BTreeMap<String, u64>,
    max_free: usize,
    regions: Vec<String>,
    interner: Interner,
}

impl Profiles {
    /// `interner` holds the profiles the customers have (from a snapshot); count them in
    /// with [`Self::hold`].
    pub fn new(settings: &ProfileSettings, interner: Interner) -> Self {
        Self {
            known: settings.keys.clone(),
            free: BTreeMap::new(),
            max_free: settings.max_free_keys,
            regions: settings.regions.clone(),
            interner,
        }
    }

    /// The free-form keys in use.
    pub(crate) fn free_keys(&self) -> impl Iterator<Item = &str> {
        self.free.keys().map(String::as_str)
    }

    fn is_known(&self, key: &str) -> bool {
        self.known.iter().any(|k| k == key)
    }

    /// `current` with `changes` applied (an empty value removes the attribute); `None` when
    /// no attribute is left. A new key beyond the bound rejects the whole change. Nothing is
    /// counted until the customer holds the result ([`Self::hold`]).
    pub(crate) fn update(
        &mut self,
        current: Option<&Profile>,
        changes: &[(&str, &str)],
    ) -> Result<Option<Arc<Profile>>, Rejection> {
        let mut new_keys: Vec<&str> = Vec::new();
        for &(key, value) in changes {
            let allowed = value.is_empty()
                || self.is_known(key)
                || self.free.contains_key(key)
                || new_keys.contains(&key);
            if !allowed {
                if self.free.len() + new_keys.len() >= self.max_free {
                    return Err(self.beyond_bound(key, &new_keys));
                }
                new_keys.push(key);
            }
        }
        let mut attributes: Vec<(&str, &str)> =
            current.map(|p| p.iter().collect()).unwrap_or_default();
        for &(key, value) in changes {
            attributes.retain(|(k, _)| *k != key);
            if !value.is_empty() {
                attributes.push((key, value));
            }
        }
        Ok((!attributes.is_empty()).then(|| self.interner.profile(attributes)))
    }

    /// The rejection of free-form key `key`, which would pass the bound: what takes the room
    /// the bound allows (keys customers have, and those `new_keys` this event brings before
    /// it), a few by name.
    fn beyond_bound(&self, key: &str, new_keys: &[&str]) -> Rejection {
        let taken = if self.max_free == 0 {
            "profiles.max_free_keys is 0: no free-form keys are accepted".to_string()
        } else {
            let in_use: Vec<&str> = self.free_keys().collect();
            format!(
                "the {} free-form keys profiles.max_free_keys allows are taken: {} in use by customers{}, {} new in this event{}",
                self.max_free,
                in_use.len(),
                named(&in_use),
                new_keys.len(),
                named(new_keys),
            )
        };
        Rejection::new(
            Reason::UnknownProfileKey,
            format!(
                "profile key {key:?} is not in profiles.keys, and {taken}; add it to profiles.keys"
            ),
        )
    }

    /// Counts a customer's change of profile from `old` to `new`: the free-form keys in use.
    pub fn hold(&mut self, old: Option<&Profile>, new: Option<&Profile>) {
        for (key, _) in old.iter().flat_map(|p| p.iter()) {
            if let Some(users) = self.free.get_mut(key) {
                *users -= 1;
                if *users == 0 {
                    self.free.remove(key);
                }
            }
        }
        for (key, _) in new.iter().flat_map(|p| p.iter()) {
            if !self.is_known(key) {
                *self.free.entry(key.to_string()).or_default() += 1;
            }
        }
    }

    /// The region label a profile counts under: one of `profiles.regions`, `other` or
    /// `none`, by index into [`Self::region_labels`].
    pub fn region(&self, profile: Option<&Profile>) -> usize {
        match profile.and_then(|p| p.get("region")) {
            None => self.regions.len() + 1,
            Some(region) => self
                .regions
                .iter()
                .position(|r| r == region)
                .unwrap_or(self.regions.len()),
        }
    }

    /// Every region label, in the order of [`Self::region`]'s indices.
    pub(crate) fn region_labels(&self) -> impl Iterator<Item = &str> {
        self.regions
            .iter()
            .map(String::as_str)
            .chain([OTHER_REGION, NO_REGION])
    }

    /// Forgets which customers hold which keys, to count them afresh with [`Self::hold`].
    pub(crate) fn forget_counts(&mut self) {
        self.free.clear();
    }

    /// Distinct profiles held.
    pub fn interned(&self) -> usize {
        self.interner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles(max_free: usize) -> Profiles {
        let settings = ProfileSettings {
            max_free_keys: max_free,
            regions: vec!["eu".into(), "us".into()],
            ..ProfileSettings::default()
        };
        Profiles::new(&settings, Interner::default())
    }

    #[test]
    fn updates_set_and_remove_attributes_and_equal_profiles_are_shared() {
        let mut p = profiles(2);
        let a = p
            .update(None, &[("region", "eu"), ("age_band", "25-34")])
            .unwrap()
            .unwrap();
        assert_eq!(a.get("region"), Some("eu"));
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            [("age_band", "25-34"), ("region", "eu")]
        );
        let b = p
            .update(None, &[("age_band", "25-34"), ("region", "eu")])
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one profile for equal attributes");
        let c = p
            .update(Some(&a), &[("region", "us"), ("age_band", "")])
            .unwrap()
            .unwrap();
        assert_eq!(c.iter().collect::<Vec<_>>(), [("region", "us")]);
        assert_eq!(p.update(Some(&c), &[("region", "")]).unwrap(), None);
    }

    /// Updates a customer holding `current` and counts the result in, as the engine does.
    fn apply(
        p: &mut Profiles,
        current: Option<Arc<Profile>>,
        changes: &[(&str, &str)],
    ) -> Result<Option<Arc<Profile>>, Rejection> {
        let new = p.update(current.as_deref(), changes)?;
        p.hold(current.as_deref(), new.as_deref());
        Ok(new)
    }

    #[test]
    fn free_form_keys_are_taken_up_to_the_bound_and_freed_when_nobody_has_them() {
        let mut p = profiles(2);
        let a = apply(
            &mut p,
            None,
            &[("loyalty_tier", "gold"), ("store", "berlin")],
        )
        .unwrap();
        assert_eq!(p.free_keys().collect::<Vec<_>>(), ["loyalty_tier", "store"]);
        // Known keys and keys in use go on; removing an unknown key is no new key.
        let b = apply(
            &mut p,
            None,
            &[("region", "eu"), ("store", "paris"), ("nickname", "")],
        )
        .unwrap();
        let err = p
            .update(None, &[("region", "us"), ("nickname", "bo")])
            .unwrap_err();
        assert_eq!(err.reason, Reason::UnknownProfileKey);
        assert!(err.detail.contains("nickname") && err.detail.contains("profiles.keys"));
        // Once nobody has a key, its place is free.
        apply(&mut p, a, &[("loyalty_tier", "")]).unwrap();
        assert_eq!(p.free_keys().collect::<Vec<_>>(), ["store"]);
        apply(&mut p, b, &[("nickname", "bo")]).unwrap();
        assert_eq!(p.free_keys().collect::<Vec<_>>(), ["nickname", "store"]);
    }

    #[test]
    fn a_rejected_update_takes_no_key() {
        let mut p = profiles(1);
        let err = p.update(None, &[("a1", "x"), ("a2", "y")]).unwrap_err();
        assert_eq!(err.reason, Reason::UnknownProfileKey);
        assert_eq!(p.free_keys().count(), 0);
    }

    #[test]
    fn the_rejection_says_what_takes_the_room_readably() {
        // One event with more new keys than the bound, nobody holding any yet.
        let mut p = profiles(16);
        let keys: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
        let changes: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "x")).collect();
        let err = p.update(None, &changes).unwrap_err();
        assert_eq!(
            err.detail,
            "profile key \"k16\" is not in profiles.keys, and the 16 free-form keys profiles.max_free_keys allows are taken: 0 in use by customers, 16 new in this event (k00, k01, k02, k03, … and 12 more); add it to profiles.keys"
        );
        assert!(!err.detail.contains("()"), "{}", err.detail);

        // Keys held by customers, and one new one in the event.
        let mut p = profiles(2);
        apply(&mut p, None, &[("store", "berlin")]).unwrap();
        let err = p
            .update(None, &[("tier", "gold"), ("nickname", "bo")])
            .unwrap_err();
        assert!(
            err.detail
                .contains("1 in use by customers (store), 1 new in this event (tier)"),
            "{}",
            err.detail
        );
        let err = profiles(0).update(None, &[("tier", "gold")]).unwrap_err();
        assert!(
            err.detail.contains("profiles.max_free_keys is 0"),
            "{}",
            err.detail
        );
    }

    #[test]
    fn regions_count_by_name_other_or_none() {
        let mut p = profiles(0);
        let labels: Vec<_> = p.region_labels().collect();
        assert_eq!(labels, ["eu", "us", "other", "none"]);
        let eu = p.update(None, &[("region", "eu")]).unwrap();
        let mars = p.update(None, &[("region", "mars")]).unwrap();
        let none = p.update(None, &[("gender", "f")]).unwrap();
        assert_eq!(p.region(eu.as_deref()), 0);
        assert_eq!(p.region(mars.as_deref()), 2);
        assert_eq!(p.region(none.as_deref()), 3);
        assert_eq!(p.region(None), 3);
    }

    #[test]
    fn unused_profiles_are_dropped_as_the_interner_grows() {
        let mut interner = Interner::default();
        let kept = interner.profile([("region", "kept")]);
        for i in 0..5_000 {
            let id = i.to_string();
            drop(interner.profile([("store", id.as_str())]));
        }
        assert!(interner.len() < 2 * MIN_PURGE, "{} held", interner.len());
        assert!(Arc::ptr_eq(&kept, &interner.profile([("region", "kept")])));
    }

    #[test]
    fn birthdays_are_read_from_the_attribute() {
        let mut interner = Interner::default();
        assert_eq!(
            interner.profile([("birthday", "02-29")]).birthday(),
            Some((2, 29))
        );
        assert_eq!(
            interner.profile([("birthday", "1990-12-01")]).birthday(),
            Some((12, 1))
        );
        assert_eq!(interner.profile([("region", "eu")]).birthday(), None);
    }
}
