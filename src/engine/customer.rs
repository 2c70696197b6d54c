//! A customer's record in the table, and what only some customers have (the sparse column).

use std::sync::Arc;

use crate::classify::{LifecycleStage, Segment};
use crate::decide::Contact;
use crate::decide::WinbackState;
use crate::features::store::{CustomerIdx, CustomerStore};
use crate::features::timers::{Timer, TimerSlots};
use crate::features::{CustomerFeatures, Decayed, Feedback};
use crate::profiles::Profile;

/// A customer's record: 80 bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Customer {
    pub features: CustomerFeatures,
    pub timer: Timer,
    pub winback: WinbackState,
    pub contact: Contact,
    /// Classification at the last scoring, as counted in the population gauges.
    pub stage: Option<LifecycleStage>,
    pub segment: Option<Segment>,
    pub bucket: Option<u8>,
}

/// What only some customers have, in the store's sparse column: the others pay nothing.
/// 16 bytes: the profile is shared, the rarer signals boxed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Extras {
    pub profile: Option<Arc<Profile>>,
    signals: Option<Box<Signals>>,
}

/// Feedback and coupon use, for the customers who have either.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Signals {
    pub feedback: Option<Feedback>,
    /// Purchases with a coupon, decayed.
    pub coupons: Option<Decayed>,
}

impl Extras {
    pub fn is_empty(&self) -> bool {
        self.profile.is_none() && self.signals.is_none()
    }

    pub fn feedback(&self) -> Option<Feedback> {
        self.signals.as_ref().and_then(|s| s.feedback)
    }

    pub fn coupons(&self) -> Option<Decayed> {
        self.signals.as_ref().and_then(|s| s.coupons)
    }

    pub(crate) fn signals_mut(&mut self) -> &mut Signals {
        self.signals.get_or_insert_default()
    }
}

/// The customer table: a record per customer, extras for some.
pub type Customers = CustomerStore<Customer, Extras>;

impl TimerSlots for Customers {
    fn timer_mut(&mut self, idx: CustomerIdx) -> &mut Timer {
        &mut self.get_mut(idx).timer
    }
}
