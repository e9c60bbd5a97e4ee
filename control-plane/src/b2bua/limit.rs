//! Calls with a longest duration (what a prepaid balance buys): from the answer of a billed
//! leg, the caller hears a warning tone `warning` before the end, then both sides get BYE
//! (cause `credit`).

use super::*;

/// A call's duration limit and its timers.
#[derive(Debug, Default)]
pub(super) struct Limit {
    /// The longest the call may last once answered, and how long before the end the warning
    /// plays.
    max: Option<(Duration, Duration)>,
    warn_at: Option<Instant>,
    end_at: Option<Instant>,
}

impl Limit {
    /// The call's limit runs (a billed leg answered).
    pub(super) fn is_running(&self) -> bool {
        self.end_at.is_some()
    }

    pub(super) fn holds(&self, at: Instant) -> bool {
        self.warn_at == Some(at) || self.end_at == Some(at)
    }
}

impl B2bua {
    /// Call `id` may last at most `max` from its answer (by a trunk, or an originated call's
    /// first party); `warning` before the end its caller hears the warning tone (none if zero
    /// or not shorter than `max`). Whether the call exists.
    pub fn set_limit(&mut self, id: u64, max: Duration, warning: Duration) -> bool {
        let Some(call) = self.calls.get_mut(&id) else { return false };
        call.limit = Limit { max: Some((max, warning)), warn_at: None, end_at: None };
        // A service call's first party is up already: its time counts from its answer.
        if let Some(at) = call.first_answered.map(|n| n.instant) {
            self.start_limit(id, at);
        }
        true
    }

    /// The call's limit starts counting at `at` (a billed leg answered), once.
    pub(super) fn start_limit(&mut self, id: u64, at: Instant) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let (Some((max, warning)), None) = (call.limit.max, call.limit.end_at) else { return };
        let end = at + max;
        call.limit.end_at = Some(end);
        let warn = (!warning.is_zero() && warning < max).then(|| end - warning);
        call.limit.warn_at = warn;
        self.schedule(end, id);
        if let Some(w) = warn {
            self.schedule(w, id);
        }
    }

    /// Runs call `id`'s limit timers due at `now`.
    pub(super) fn limit_due(&mut self, id: u64, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.limit.warn_at.is_some_and(|w| w <= now.instant) {
            call.limit.warn_at = None;
            if let Some(legs) = call.media.as_ref().map(|m| m.facing(true)) {
                let tone = self.config.billing.warning_tone.clone();
                self.media_request(id, MediaRequest::Tone { legs, tone, looped: false });
            }
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        if call.limit.end_at.is_none_or(|e| e > now.instant) {
            return;
        }
        call.limit.end_at = None;
        if matches!(call.state, State::Answered | State::Confirmed) {
            tracing::info!(call = id, "the call's credit ran out: ending it");
            call.cause = "credit";
            self.stats.calls_cut_off += 1;
            self.stats.calls_completed += 1;
            self.end_both(id, now);
        }
    }
}
